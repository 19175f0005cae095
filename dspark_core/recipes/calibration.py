"""Stage 4b, calibration: decode prompts the draft never trained on with its whole block verified, record each
round's confidences and how far it was accepted, fit sequential temperature scaling on one part of the prompts
and report ECE / AUROC / Brier per position before and after on the other part; write the calibrated draft
(the same weights, the temperatures in its config) next to the trained one."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import dspark_core
from dspark_core.drafters.checkpoint import load_draft, save_draft, weights_sha256
from dspark_core.drafters.registry import drafter_kind
from dspark_core.errors import ConfigError
from dspark_core.paths import exclusive_writer
from dspark_core.evaluation.calibration import (
    DEFAULT_BINS, METHODS, CalibrationMetrics, calibration_metrics, fit_temperatures, position_samples, reliability_bins,
)
from dspark_core.evaluation.plots import reliability_diagrams
from dspark_core.evaluation.speculative import EvalPrompt, EvalSettings, decode_prompts
from dspark_core.models.target import TargetModel
from dspark_core.settings import check_settings, setting
from dspark_core.store.acceptance import AcceptanceRow, measurement_key

__all__ = ["CalibrationConfig", "CalibrationReport", "calibrate", "calibrated_path"]

CALIBRATED_DIR = "calibrated"


@dataclass(frozen=True)
class CalibrationConfig:
    suite: str = setting("heldout-v1", "Built-in prompt suite decoded for calibration (never used for training)")
    max_prompts: int = setting(32, "Prompts decoded to collect confidence samples", min=2)
    max_new_tokens: int = setting(64, "Tokens generated per prompt", min=1)
    test_fraction: float = setting(0.5, "Share of the prompts (chosen by content hash) held out to report the "
                                        "calibration on; the rest fits the temperatures", above=0, below=1)
    temperature: float = setting(0.0, "Sampling temperature of the decoding whose acceptance the confidences "
                                      "should predict (0 = greedy, as the evaluations decode)", min=0)
    bins: int = setting(DEFAULT_BINS, "Equal-width bins of the ECE and the reliability diagrams", min=2)
    method: str = setting("affine", "affine: a temperature and a shift per draft position, fitted on the Brier score "
                                    "(a temperature cannot move a confidence of 0.5, and trained heads are biased); "
                                    "temperature: one temperature per position, fitted on the ECE (sequential "
                                    "temperature scaling)", choices=METHODS)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class CalibrationReport:
    config: CalibrationConfig
    draft_path: Path
    #: the calibrated draft (the trained one itself when there is nothing to calibrate)
    calibrated_path: Path
    algorithm: str
    target_revision: str | None
    #: why nothing was calibrated (None: it was)
    skipped: str | None = None
    temperatures: list[float] = field(default_factory=list)
    shifts: list[float] = field(default_factory=list)  # all 0 for the temperature method
    fit_prompts: int = 0
    test_prompts: int = 0
    rounds: int = 0
    #: on the test prompts, per position
    before: list[CalibrationMetrics] = field(default_factory=list)
    after: list[CalibrationMetrics] = field(default_factory=list)
    #: reliability bins per position on the test prompts ({"uncalibrated": [...], "calibrated": [...]})
    reliability: dict[str, list[list[dict]]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Scalar metrics (what a tracking run records): per position k, ECE/AUROC/Brier before and after, T_k."""
        values: dict[str, float] = {}
        for stage, rows in (("before", self.before), ("after", self.after)):
            for m in rows:
                values.update({f"{name}_{stage}_{m.position}": value for name, value in
                               (("ece", m.ece), ("auroc", m.auroc), ("brier", m.brier)) if value is not None})
        values.update({f"temperature_{k}": t for k, t in enumerate(self.temperatures, start=1)})
        values.update({f"shift_{k}": b for k, b in enumerate(self.shifts, start=1)})
        return values

    def table(self) -> tuple[list[str], list[list]]:
        columns = ["position", "T", "b", "test n", "ECE before", "ECE after", "AUROC", "Brier before", "Brier after",
                   "predicted after", "observed"]
        rows = [[b.position, t, shift, b.n, b.ece, a.ece, b.auroc, b.brier, a.brier, a.mean_predicted, a.observed_rate]
                for b, a, t, shift in zip(self.before, self.after, self.temperatures, self.shifts)]
        return columns, rows

    def to_dict(self) -> dict:
        """Everything measured, as plain JSON values (for result files)."""
        return {"config": asdict(self.config), "draft_path": str(self.draft_path),
                "calibrated_path": str(self.calibrated_path), "algorithm": self.algorithm,
                "target_revision": self.target_revision, "skipped": self.skipped, "temperatures": self.temperatures,
                "shifts": self.shifts, "fit_prompts": self.fit_prompts, "test_prompts": self.test_prompts,
                "rounds": self.rounds, "before": [m.as_dict() for m in self.before],
                "after": [m.as_dict() for m in self.after], "reliability": self.reliability}

    def plot(self, path: Path) -> Path:
        return reliability_diagrams(self.reliability, path, title=f"{self.algorithm}: predicted vs observed survival "
                                                                  f"(test prompts)")

    def acceptance_rows(self, *, base_model: str, recorded_at: datetime, run_id: str | None = None,
                        mlflow_run_id: str | None = None) -> list[AcceptanceRow]:
        """ECE, AUROC and Brier per position on the test prompts, after calibration (benchmark
        `calibration-<method>:<suite>`) and before it (the same with `:uncalibrated`)."""
        key = measurement_key(base_model=base_model, drafter=self.algorithm, weights=weights_sha256(self.draft_path),
                              settings=asdict(self.config), prompts=[str(self.calibrated_path)],
                              code_version=dspark_core.__version__, day=recorded_at.date().isoformat())
        shared = AcceptanceRow(recorded_at=recorded_at, measurement_key=key, run_id=run_id, mlflow_run_id=mlflow_run_id,
                               base_model=base_model, base_model_revision=self.target_revision, drafter=self.algorithm,
                               draft_checkpoint=str(self.calibrated_path), draft_version=None,
                               benchmark=f"calibration-{self.config.method}:{self.config.suite}",
                               temperature=self.config.temperature,
                               block_size=len(self.after), code_version=dspark_core.__version__)
        rows = []
        for suffix, per_position in (("", self.after), (":uncalibrated", self.before)):
            for m in per_position:
                for metric, value in (("ece", m.ece), ("auroc", m.auroc), ("brier", m.brier)):
                    if value is not None:
                        rows.append(replace(shared, benchmark=shared.benchmark + suffix, metric=metric,
                                            position=m.position, value=float(value), n=m.n))
        return rows


def calibrated_path(draft_path: Path) -> Path:
    """Where the calibrated copy of a trained draft goes: beside it."""
    return Path(draft_path).parent / CALIBRATED_DIR


def _is_test(prompt: EvalPrompt, fraction: float) -> bool:
    return int(hashlib.sha256(prompt.id.encode()).hexdigest()[:8], 16) / 16**8 < fraction


def calibrate(target: TargetModel, draft_path: Path, prompts: list[EvalPrompt], config: CalibrationConfig = CalibrationConfig(),
              *, out: Path | None = None, progress: bool = False) -> CalibrationReport:
    """Fit the confidence temperatures of the draft at `draft_path` on `prompts` and write the calibrated draft to
    `out` (default: `calibrated/` beside the draft). A draft without a confidence head is returned unchanged."""
    draft_path = Path(draft_path)
    module, checkpoint = load_draft(draft_path, target)
    algorithm = checkpoint["algorithm"]
    report = CalibrationReport(config=config, draft_path=draft_path, calibrated_path=draft_path, algorithm=algorithm,
                               target_revision=target.revision)
    if getattr(module, "confidence", None) is None:
        report.skipped = f"{algorithm} has no confidence head: nothing to calibrate, the trained draft is used as is"
        return report
    destination = Path(out) if out else calibrated_path(draft_path)
    with exclusive_writer(destination, "calibrating a draft"):  # a second calibration is refused, not raced
        return _fit_and_save(target, draft_path, module, checkpoint, prompts, config, report, destination, progress)


def _fit_and_save(target, draft_path: Path, module, checkpoint: dict, prompts: list[EvalPrompt], config: CalibrationConfig,
                  report: CalibrationReport, destination: Path, progress: bool) -> CalibrationReport:
    """`calibrate` once the destination is held: decode, fit, measure, write the calibrated copy."""
    drafter = drafter_kind(report.algorithm).runtime(module)
    drafter.confidence_temperatures = drafter.confidence_shifts = ()  # collect the raw confidences
    prompts = prompts[: config.max_prompts]
    settings = EvalSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            block_size=module.config.block_size)
    results = decode_prompts(target, drafter, prompts, settings, desc="calibration", progress=progress)
    test = [r for r in results if _is_test(r.prompt, config.test_fraction)]
    fit = [r for r in results if not _is_test(r.prompt, config.test_fraction)]
    if not test or not fit:
        raise ConfigError(f"{len(prompts)} prompts leave an empty {'test' if not test else 'fit'} split; decode more "
                          f"prompts (max_prompts) or change test_fraction")
    depth = module.config.block_size
    fit_samples = position_samples((record for r in fit for record in r.rounds), depth)
    test_samples = position_samples((record for r in test for record in r.rounds), depth)
    temperatures, shifts = fit_temperatures(fit_samples, config.bins, config.method)
    report.temperatures, report.shifts, report.fit_prompts, report.test_prompts = temperatures, shifts, len(fit), len(test)
    report.rounds = sum(len(r.rounds) for r in results)
    report.before = calibration_metrics(test_samples, bins=config.bins)
    report.after = calibration_metrics(test_samples, temperatures, shifts, config.bins)
    report.reliability = {
        "uncalibrated": [reliability_bins(s.survival(), s.survived, config.bins) for s in test_samples],
        "calibrated": [reliability_bins(s.survival(temperatures, shifts), s.survived, config.bins) for s in test_samples],
    }

    saved, _ = load_draft(draft_path)  # at its saved precision, without the target attached
    saved.config.confidence_temperatures = tuple(temperatures)
    saved.config.confidence_shifts = tuple(shifts)
    kept = {k: v for k, v in checkpoint.items() if k not in {"format", "module", "code_version"}}
    report.calibrated_path = save_draft(
        saved, destination, target=target, training=checkpoint.get("training"),
        extra={**kept, "calibration": {"temperatures": temperatures, "shifts": shifts, "source": str(draft_path),
                                       "settings": asdict(config),
                                       "ece_before": [m.ece for m in report.before],
                                       "ece_after": [m.ece for m in report.after]}})
    return report
