"""Stage 7, transfer tests: trained drafts evaluated unchanged on other base models.

* Draft transfer across a lineage: a draft trained on X evaluated on X′ (a derived X: re-quantized, fine-tuned;
  same tokenizer); its τ retention τ(X′)/τ(X). When the retention of X's best draft falls under the threshold,
  X′ needs drafts of its own (the platform then requests its retraining).
* Recipe transfer across families: the drafts of each base model on that base model (the matrix's diagonal),
  DSpark's relative gain over DFlash and Eagle3 per family, side by side.

The matrix has one row per trained draft (base model · algorithm) and one column per evaluated base model; a
cell whose shapes do not fit (another hidden size or vocabulary) says why instead of a τ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from dspark_core.drafters.checkpoint import read_draft_config, shape_mismatch
from dspark_core.errors import DsparkError
from dspark_core.evaluation.plots import heat_map
from dspark_core.evaluation.suites import Benchmark
from dspark_core.models.spec import slugify
from dspark_core.models.target import TargetModel
from dspark_core.recipes.evaluation import EvalConfig
from dspark_core.recipes.suite_evaluation import SuiteReport, evaluate_suite
from dspark_core.settings import DEFAULT_DECODE_BLOCK_SIZE, check_settings, default_of, help_of, setting
from dspark_core.store.acceptance import AcceptanceRow

__all__ = ["Retention", "TransferConfig", "TrainedDraft", "TransferReport", "transfer_report"]


@dataclass(frozen=True)
class TransferConfig:
    suites: tuple[str, ...] = setting(default_of(EvalConfig, "suites"), help_of(EvalConfig, "suites"))
    max_prompts: int = setting(12, "Prompts decoded per benchmark and base model", min=1)
    max_new_tokens: int = setting(64, "Tokens generated per prompt", min=1)
    temperature: float = setting(0.0, "0 = greedy; > 0 samples", min=0)
    block_size: int | None = setting(DEFAULT_DECODE_BLOCK_SIZE, help_of(EvalConfig, "block_size"), min=1)
    seed: int = setting(0, "Sampling seed")
    retention_threshold: float = setting(0.9, "τ retention (τ on X′ / τ on X of X's best draft) under which the "
                                              "derived model X′ gets drafts of its own", min=0, max=1)

    def __post_init__(self) -> None:
        check_settings(self)
        object.__setattr__(self, "suites", tuple(self.suites))

    def eval_config(self) -> EvalConfig:
        return EvalConfig(suites=self.suites, max_prompts=self.max_prompts, max_new_tokens=self.max_new_tokens,
                          temperature=self.temperature, block_size=self.block_size, seed=self.seed)


@dataclass(frozen=True)
class TrainedDraft:
    """A trained draft (checkpoint or export) and the base model it was trained on."""

    path: Path
    trained_on: str  # the base model's slug
    algorithm: str
    target_spec: str = ""  # the base model's spec

    @staticmethod
    def from_path(path: Path) -> "TrainedDraft":
        config = read_draft_config(Path(path))
        return TrainedDraft(Path(path), slugify(config["target"]), config["algorithm"], config["target"])

    @property
    def label(self) -> str:
        return f"{self.trained_on} · {self.algorithm}"


@dataclass(frozen=True)
class Retention:
    draft: str
    parent: str
    derived: str
    tau_parent: float
    tau_derived: float

    @property
    def ratio(self) -> float:
        return self.tau_derived / self.tau_parent


@dataclass
class TransferReport:
    config: TransferConfig
    drafts: list[TrainedDraft]
    #: evaluated base model slug -> its parent's slug (a derived model) or None
    lineage: dict[str, str | None]
    #: evaluated base model slug -> the suite evaluation of every draft that fits it
    evaluations: dict[str, SuiteReport] = field(default_factory=dict)
    #: (draft label, evaluated base model) -> why it could not run there
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def targets(self) -> list[str]:
        return list(self.lineage)

    def tau(self, draft: TrainedDraft, target: str) -> float | None:
        report = self.evaluations.get(target)
        return report.mean_tau(draft.label) if report is not None and draft.label in report.reports else None

    def matrix(self) -> tuple[list[str], list[list]]:
        """Rows: trained on (base model · algorithm); columns: evaluated on; cells: mean τ over the suites."""
        rows = []
        for draft in self.drafts:
            cells = []
            for target in self.targets:
                tau = self.tau(draft, target)
                cells.append(tau if tau is not None else f"n/a: {self.skipped.get((draft.label, target), 'not run')}")
            rows.append([draft.label, *cells])
        return ["trained on ↓ / evaluated on →", *self.targets], rows

    def retentions(self) -> list[Retention]:
        """τ(X′)/τ(X) of every draft of X, for every evaluated X′ derived from an evaluated X."""
        found = []
        for derived, parent in self.lineage.items():
            if parent is None or parent not in self.lineage:
                continue
            for draft in self.drafts:
                if draft.trained_on != parent:
                    continue
                before, after = self.tau(draft, parent), self.tau(draft, derived)
                if before and after is not None:
                    found.append(Retention(draft.label, parent, derived, before, after))
        return found

    def retraining_needed(self) -> dict[str, str]:
        """{X′: reason} for each derived model on which X's best draft (highest τ on X) keeps less than the
        threshold of its τ."""
        needed = {}
        for derived in {r.derived for r in self.retentions()}:
            best = max((r for r in self.retentions() if r.derived == derived), key=lambda r: r.tau_parent)
            if best.ratio < self.config.retention_threshold:
                needed[derived] = (f"the best draft of {best.parent} ({best.draft}) keeps {best.ratio:.0%} of its τ on "
                                   f"{derived} ({best.tau_derived:.2f} vs {best.tau_parent:.2f}), under the "
                                   f"{self.config.retention_threshold:.0%} threshold")
        return needed

    def retention_table(self) -> tuple[list[str], list[list]]:
        columns = ["draft", "X", "X′", "τ on X", "τ on X′", "retention", "under threshold"]
        return columns, [[r.draft, r.parent, r.derived, r.tau_parent, r.tau_derived, r.ratio,
                          r.ratio < self.config.retention_threshold] for r in self.retentions()]

    def family_table(self) -> tuple[list[str], list[list]]:
        """Each base model's own drafts on it (the diagonal): τ per algorithm and DSpark's relative gain."""
        present = {d.algorithm for d in self.drafts}
        algorithms = [a for a in ("dspark", "dflash", "eagle3") if a in present] + sorted(present - {"dspark", "dflash", "eagle3"})
        rows = []
        for target in self.targets:
            own = {d.algorithm: self.tau(d, target) for d in self.drafts if d.trained_on == target}
            if not any(v is not None for v in own.values()):
                continue
            gains = [(own["dspark"] / own[other] - 1) if own.get("dspark") and own.get(other) else None
                     for other in ("dflash", "eagle3")]
            rows.append([target, *(own.get(a) for a in algorithms), *gains])
        return ["base model", *(f"τ {a}" for a in algorithms), "DSpark vs DFlash", "DSpark vs Eagle3"], rows

    def heat_map(self, path: Path) -> Path:
        columns, rows = self.matrix()
        values = [[v if isinstance(v, float) else None for v in row[1:]] for row in rows]
        return heat_map(values, [row[0] for row in rows], columns[1:], path,
                        title=f"mean τ, {'greedy' if self.config.temperature == 0 else f'T={self.config.temperature}'}")

    def acceptance_rows(self, *, recorded_at: datetime, run_id: str | None = None,
                        mlflow_run_id: str | None = None) -> list[AcceptanceRow]:
        """The long-form rows of every cell, under the evaluated base model; a draft from another base model
        carries `trained-on:<slug>` as its draft_version (so it never reads as that model's own draft)."""
        rows = []
        for target, report in self.evaluations.items():
            versions = {d.label: f"trained-on:{d.trained_on}" for d in self.drafts if d.trained_on != target}
            rows += report.acceptance_rows(base_model=target, recorded_at=recorded_at, run_id=run_id,
                                           mlflow_run_ids={label: mlflow_run_id for label in report.labels}
                                           if mlflow_run_id else None, draft_versions=versions)
        return rows

    def metrics(self) -> dict[str, float]:
        values = {f"tau.{d.trained_on}.{d.algorithm}.on.{t}": self.tau(d, t) for d in self.drafts for t in self.targets}
        values.update({f"retention.{r.draft.replace(' · ', '.')}.on.{r.derived}": r.ratio for r in self.retentions()})
        return {k: float(v) for k, v in values.items() if v is not None}

    def to_json(self) -> dict:
        def table(pair):
            return {"columns": pair[0], "rows": pair[1]}
        return {"config": asdict(self.config), "drafts": [{"label": d.label, "path": str(d.path)} for d in self.drafts],
                "lineage": self.lineage, "matrix": table(self.matrix()), "retention": table(self.retention_table()),
                "families": table(self.family_table()), "retraining_needed": self.retraining_needed(),
                "per_target": {t: r.to_json() for t, r in self.evaluations.items()}}


def transfer_report(drafts: list[TrainedDraft], targets: dict[str, Callable[[], TargetModel]],
                    lineage: dict[str, str | None], benchmarks: list[Benchmark], config: TransferConfig, *,
                    progress: bool = False) -> TransferReport:
    """Evaluate every draft on every target whose shapes it fits (`targets`: slug -> loader; loaded one at a
    time), each target's prompts decoded autoregressively once."""
    if not drafts:
        raise DsparkError("no trained drafts to test; train one first (`dspark train` or the Dagster assets)")
    report = TransferReport(config, drafts, {slug: lineage.get(slug) for slug in targets})
    for slug, load in targets.items():
        try:
            target = load()
        except Exception as exc:  # one model that cannot load (a broken file, no network) leaves its column empty
            for draft in drafts:
                report.skipped[(draft.label, slug)] = f"cannot load {slug} ({type(exc).__name__}: {str(exc)[:200]})"
            continue
        runnable = {}
        for draft in drafts:
            mismatch = shape_mismatch(read_draft_config(draft.path), target)
            if mismatch:
                report.skipped[(draft.label, slug)] = mismatch
            else:
                runnable[draft.label] = draft.path
        if runnable:
            report.evaluations[slug] = evaluate_suite(target, runnable, benchmarks, config.eval_config(),
                                                      progress=progress, other_target=True)
        del target
    return report

