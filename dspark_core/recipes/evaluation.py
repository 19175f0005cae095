"""Stage 6, evaluation: speculative decoding with a trained draft against autoregressive decoding of the same
target, through the same engine, on held-out prompts; τ, per-position acceptance, draft/verify cost and
speed-up per domain and prompt-length bucket, and the long-form rows of the metrics store."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import dspark_core
from dspark_core.data.prompts import PromptRecord, read_prompt_file
from dspark_core.decoding.drafter import Drafter
from dspark_core.drafters.checkpoint import load_drafter, read_draft_config, weights_sha256
from dspark_core.errors import DsparkError
from dspark_core.evaluation.plots import acceptance_curves
from dspark_core.evaluation.speculative import (
    EvalPrompt, EvalSettings, GroupSummary, PromptResult, decode_prompts, domain_summaries, eval_prompts,
    mismatched_prompts, summarize,
)
from dspark_core.models.target import TargetModel
from dspark_core.decoding.scheduler import ScheduleConfig
from dspark_core.decoding.step_cost import decoding_profile, ensure_profile
from dspark_core.settings import (
    DEFAULT_BLOCK_SIZE, DEFAULT_DECODE_BLOCK_SIZE, bounds_of, check_settings, default_of, help_of, setting,
)
from dspark_core.store.acceptance import AcceptanceRow, measurement_key

__all__ = ["EvalConfig", "EvalReport", "evaluate", "held_out_prompts"]


@dataclass(frozen=True)
class EvalConfig:
    suites: tuple[str, ...] = setting(("heldout-v1",), "Evaluation suites: built-in (heldout-v1), a standard "
                                      "benchmark's name or NAME=PATH of a local copy, a Spec-Bench .jsonl file, or "
                                      "'validation' (the dataset's held-out prompts)")
    benchmark: str = setting("held-out", "Benchmark name recorded with the metrics (the suite's, when evaluating one)")
    max_prompts: int = setting(12, "Prompts decoded per benchmark (spread evenly over its domains)", min=1)
    max_new_tokens: int = setting(64, "Tokens generated per prompt", min=1)
    temperature: float = setting(0.0, "0 = greedy; > 0 samples (still exactly the target's distribution)", min=0)
    seed: int = setting(0, "Sampling seed")
    block_size: int | None = setting(DEFAULT_DECODE_BLOCK_SIZE, "Most draft tokens verified per round, at most "
                                 "the draft's γ (empty: γ). Where verifying more tokens costs more (a CPU), "
                                 "fewer decode faster", min=1)

    schedule: str = setting(default_of(ScheduleConfig, "mode"), help_of(ScheduleConfig, "mode"),
                            **bounds_of(ScheduleConfig, "mode"))
    threshold: float = setting(default_of(ScheduleConfig, "threshold"), help_of(ScheduleConfig, "threshold"),
                               **bounds_of(ScheduleConfig, "threshold"))

    def __post_init__(self) -> None:
        check_settings(self)
        object.__setattr__(self, "suites", tuple(self.suites))
        self.schedule_config  # checks mode and threshold

    @property
    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig(mode=self.schedule, threshold=self.threshold)


@dataclass
class EvalReport:
    config: EvalConfig
    target_spec: str
    target_revision: str
    drafter: str  # the algorithm of a trained draft, else the drafter's name
    draft_path: Path | None
    weights_sha256: str | None
    block_size: int
    prompts: list[EvalPrompt]
    #: the whole benchmark first (domain = context bucket = 'all'), then one per (domain, bucket)
    summaries: list[GroupSummary]
    #: prompts whose greedy output differs from autoregressive decoding (None when sampling)
    mismatches: list[str] | None
    #: the autoregressive decoding of the same prompts (reusable as the next evaluation's baseline)
    baseline: list[PromptResult] = field(default_factory=list, repr=False)
    #: the speculative decoding of each prompt
    results: list[PromptResult] = field(default_factory=list, repr=False)

    def by_domain(self) -> list[GroupSummary]:
        """One summary per domain over all prompt lengths."""
        return domain_summaries(self.results, self.baseline, self.block_size)

    @property
    def overall(self) -> GroupSummary:
        return self.summaries[0]

    @property
    def greedy_identical(self) -> bool | None:
        return None if self.mismatches is None else not self.mismatches

    @property
    def eval_id(self) -> str:
        """How τ was measured (benchmark, temperature, length, prompts): τ is only ever compared with τ
        measured alike."""
        prompts = hashlib.sha256("".join(p.id for p in self.prompts).encode()).hexdigest()[:12]
        identity = {"benchmark": self.config.benchmark, "temperature": self.config.temperature,
                    "max_new_tokens": self.config.max_new_tokens, "prompts": prompts}
        if self.config.schedule != "fixed":  # fixed-length ids stay what they were before schedules existed
            identity["schedule"] = self.config.schedule
        return json.dumps(identity, sort_keys=True)

    def metrics(self) -> dict[str, float]:
        """Scalar metrics of the whole benchmark (what a tracking run records)."""
        overall = self.overall
        values = {"tau": overall.tau, "speedup": overall.speedup, "tokens_per_s": overall.tokens_per_s,
                  "draft_ms_per_round": overall.draft_ms_per_round, "verify_ms_per_round": overall.verify_ms_per_round}
        values.update({f"prefix_accept_{k}": rate for k, (rate, _) in enumerate(overall.prefix_accept, 1)})
        values.update({f"cond_accept_{k}": rate for k, (rate, _) in enumerate(overall.cond_accept, 1)})
        return {name: float(value) for name, value in values.items() if value is not None}

    def table(self) -> tuple[list[str], list[list]]:
        """(columns, rows): one row per group, for display."""
        columns = ["domain", "context", "prompts", "τ", "speed-up", "draft ms", "verify ms", "cond. accept @k"]
        rows = [[s.domain, s.context_bucket, s.prompts, s.tau, s.speedup, s.draft_ms_per_round, s.verify_ms_per_round,
                 " ".join("–" if r is None else f"{r:.2f}" for r, _ in s.cond_accept)] for s in self.summaries]
        return columns, rows

    def measurement_key(self, base_model: str, recorded_at: datetime) -> str:
        """One measurement per base model, drafter, weights, settings, prompts, code version and UTC day:
        measuring again the same day replaces it; another day adds one."""
        return measurement_key(base_model=base_model, drafter=self.drafter, weights=self.weights_sha256,
                               settings={**asdict(self.config), "block_size": self.block_size},
                               prompts=[p.id for p in self.prompts], code_version=dspark_core.__version__,
                               day=recorded_at.date().isoformat())

    def acceptance_rows(self, *, base_model: str, recorded_at: datetime, run_id: str | None = None,
                        mlflow_run_id: str | None = None, draft_version: str | None = None) -> list[AcceptanceRow]:
        """Long-form rows of the metrics store: one per measured value and group."""
        shared = AcceptanceRow(
            recorded_at=recorded_at, measurement_key=self.measurement_key(base_model, recorded_at), run_id=run_id,
            mlflow_run_id=mlflow_run_id, base_model=base_model, base_model_revision=self.target_revision,
            drafter=self.drafter, draft_checkpoint=None if self.draft_path is None else str(self.draft_path),
            draft_version=draft_version,
            benchmark=self.config.benchmark, temperature=self.config.temperature, block_size=self.block_size,
            code_version=dspark_core.__version__, schedule=self.config.schedule,
        )
        rows = []
        for s in self.summaries:
            def add(metric: str, value, n, position=None) -> None:
                rows.append(replace(shared, domain=s.domain, context_bucket=s.context_bucket, metric=metric,
                                    position=position, value=None if value is None else float(value), n=n))

            add("tau", s.tau, s.rounds)
            add("tokens_per_s", s.tokens_per_s, s.new_tokens)
            if s.speedup is not None:
                add("speedup", s.speedup, s.new_tokens)
            add("draft_ms_per_round", s.draft_ms_per_round, s.rounds)
            add("verify_ms_per_round", s.verify_ms_per_round, s.rounds)
            for metric, rates in (("prefix_accept", s.prefix_accept), ("cond_accept", s.cond_accept)):
                for k, (rate, eligible) in enumerate(rates, start=1):
                    if rate is not None:
                        add(metric, rate, eligible, position=k)
        # what the draft's whole line had trained when it was measured (the longitudinal view: tau_by_training)
        for metric, value in self.line_totals().items():
            rows.append(replace(shared, domain="all", context_bucket="all", metric=metric, position=None,
                                value=float(value), n=None))
        return rows

    def line_totals(self) -> dict[str, int]:
        """Steps and tokens trained over the line of drafts the evaluated draft grew from, itself included."""
        if self.draft_path is None or not Path(self.draft_path).is_dir():
            return {}
        try:
            training = read_draft_config(self.draft_path).get("training") or {}
        except DsparkError:  # not a checkpoint of ours: nothing known of its training
            return {}
        steps = training.get("cumulative_steps", training.get("steps_done"))
        totals = {"cumulative_steps": steps, "cumulative_tokens": training.get("cumulative_tokens")}
        return {metric: int(value) for metric, value in totals.items() if value is not None}

    def acceptance_plot(self, path: Path) -> Path:
        overall = self.overall
        return acceptance_curves({"prefix acceptance": [r for r, _ in overall.prefix_accept],
                                  "conditional acceptance": [r for r, _ in overall.cond_accept]},
                                 path, title=f"{self.drafter} on {self.target_spec}, τ {overall.tau:.2f}")


def validation_records(prompts_file: Path) -> list[PromptRecord]:
    """The validation split of a dataset's prompt file (never trained on)."""
    held_out = [record for record, split in read_prompt_file(prompts_file) if split == "validation"]
    if not held_out:
        raise DsparkError(f"{prompts_file} has no validation prompts; raise the prompts' validation_fraction")
    return held_out


def held_out_prompts(target: TargetModel, prompts_file: Path, limit: int | None = None) -> list[EvalPrompt]:
    """The validation split of a prompt file, rendered with the target's chat template."""
    return eval_prompts(target, validation_records(prompts_file), limit)


def evaluate(target: TargetModel, drafter: Drafter | Path, prompts: list[EvalPrompt], config: EvalConfig, *,
             baseline: list[PromptResult] | None = None, progress: bool = False,
             other_target: bool = False) -> EvalReport:
    """Decode `prompts` one request at a time autoregressively (unless `baseline` already holds that, from this
    process), then with `drafter` (a trained checkpoint or export directory, or any engine drafter), after a
    short warm-up; the speed-up is the ratio of the two. `other_target`: the draft was trained for another
    model with the same shapes (a transfer test) and runs on `target` unchanged."""
    draft_path = None if isinstance(drafter, Drafter) else Path(drafter)
    if draft_path is not None:
        drafter = load_drafter(draft_path, target, check_target=not other_target)
    block_size = drafter.block_size or DEFAULT_BLOCK_SIZE
    if config.block_size is not None:
        block_size = min(block_size, config.block_size)
    settings = EvalSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            block_size=block_size, seed=config.seed, schedule=config.schedule_config)
    # the measured pass costs: what the scheduled mode trades against, and the widths every mode pads passes to
    step_costs = (ensure_profile(target, progress=progress)[0] if config.schedule == "scheduled"
                  else decoding_profile(target, block_size, progress=progress))
    decode_prompts(target, drafter, prompts[:1], replace(settings, max_new_tokens=8), progress=False,
                   step_costs=step_costs)  # warm-up
    if baseline is None:
        baseline = decode_prompts(target, None, prompts, settings, desc="autoregressive", progress=progress)
    results = decode_prompts(target, drafter, prompts, settings, desc=drafter.name, progress=progress,
                             step_costs=step_costs)
    return EvalReport(
        config=config, target_spec=target.spec, target_revision=target.revision,
        drafter=read_draft_config(draft_path)["algorithm"] if draft_path else drafter.name, draft_path=draft_path,
        weights_sha256=weights_sha256(draft_path) if draft_path else None, block_size=block_size, prompts=prompts,
        summaries=summarize(results, baseline, block_size),
        mismatches=mismatched_prompts(results, baseline) if config.temperature == 0 else None, baseline=baseline,
        results=results,
    )
