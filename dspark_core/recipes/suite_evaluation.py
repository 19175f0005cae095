"""Stage 6 over a suite: several drafters on several benchmarks, each benchmark decoded autoregressively once
and then with every drafter (same prompts, same process), summarized the way the DSpark paper's Table 1 is:
τ per benchmark and domain per drafter, their macro mean, the speed-up, and conditional acceptance by position.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from dspark_core.decoding.drafter import Drafter
from dspark_core.errors import DsparkError
from dspark_core.evaluation.plots import acceptance_curves
from dspark_core.evaluation.speculative import GroupSummary, eval_prompts, summarize
from dspark_core.evaluation.suites import Benchmark, load_suite, ordered_domains, unseen_in_training
from dspark_core.models.target import TargetModel
from dspark_core.recipes.evaluation import EvalConfig, EvalReport, evaluate, validation_records
from dspark_core.store.acceptance import AcceptanceRow

__all__ = ["VALIDATION_SUITE", "SuiteReport", "evaluate_suite", "resolve_suites"]

#: the suite name that means "the dataset's own held-out (validation-split) prompts"
VALIDATION_SUITE = "validation"


def resolve_suites(specs: tuple[str, ...] | list[str], training_prompts: Path | None, *,
                   on_error: str = "raise") -> list[Benchmark]:
    """The benchmarks of `specs`; each checked by content hash against the dataset's prompts (`training_prompts`,
    when given) so that no draft is evaluated on what it was trained on. `validation` is that dataset's own
    held-out split (kept out of training by construction)."""
    if not specs:
        raise DsparkError("no evaluation suite given; name at least one (e.g. heldout-v1)")
    benchmarks = []
    for spec in specs:
        if spec == VALIDATION_SUITE:
            if training_prompts is None or not training_prompts.exists():
                raise DsparkError(f"the suite {VALIDATION_SUITE!r} is a dataset's held-out prompts and no dataset "
                                  f"prompts were found ({training_prompts}); run `dspark data prompts` first")
            benchmarks.append(Benchmark("held-out", validation_records(training_prompts)))
            continue
        benchmark = load_suite(spec, on_error=on_error)
        if training_prompts is not None and training_prompts.exists():
            unseen_in_training(benchmark.records, training_prompts)
        benchmarks.append(benchmark)
    names = [b.name for b in benchmarks]
    if len(set(names)) != len(names):
        raise DsparkError(f"two suites have the same benchmark name ({', '.join(names)}); name local copies "
                          f"apart with NAME=PATH")
    return benchmarks


@dataclass
class SuiteReport:
    config: EvalConfig
    target_spec: str
    benchmarks: list[Benchmark]
    #: drafter label -> benchmark name -> report (every report of a benchmark shares one autoregressive baseline)
    reports: dict[str, dict[str, EvalReport]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return list(self.reports)

    def columns(self) -> list[tuple[str, str]]:
        """(domain, benchmark) pairs with prompts, domains in display order."""
        pairs = {(record.source, b.name) for b in self.benchmarks for record in b.records}
        return [(d, b) for d in ordered_domains({d for d, _ in pairs}) for b in sorted({b for dd, b in pairs if dd == d})]

    def group(self, label: str, domain: str, benchmark: str) -> GroupSummary | None:
        return next((s for s in self.reports[label][benchmark].by_domain() if s.domain == domain), None)

    def overall(self, label: str) -> GroupSummary:
        """One drafter over every prompt of the suite (speed-up against the same prompts' baselines)."""
        reports = list(self.reports[label].values())
        results = [r for report in reports for r in report.results]
        baseline = [r for report in reports for r in report.baseline]
        return summarize(results, baseline, reports[0].block_size)[0]

    def mean_tau(self, label: str) -> float | None:
        """Macro mean of τ over the table's (domain, benchmark) columns, as the paper averages benchmarks."""
        taus = [g.tau for g in (self.group(label, d, b) for d, b in self.columns()) if g and g.tau is not None]
        return statistics.mean(taus) if taus else None

    def greedy_identical(self, label: str) -> bool | None:
        verdicts = [report.greedy_identical for report in self.reports[label].values()]
        return None if None in verdicts else all(verdicts)

    @property
    def eval_id(self) -> str:
        """How the suite was measured (benchmarks, temperature, length, prompts): τ only compares with τ measured
        alike."""
        prompts = hashlib.sha256("".join(r.id for b in self.benchmarks for r in b.records).encode()).hexdigest()[:12]
        return json.dumps({"benchmark": "+".join(b.name for b in self.benchmarks), "temperature": self.config.temperature,
                           "max_new_tokens": self.config.max_new_tokens, "prompts": prompts,
                           **({"schedule": self.config.schedule} if self.config.schedule != "fixed" else {})},
                          sort_keys=True)

    def table(self) -> tuple[list[str], list[list]]:
        """Table 1 of the paper: one row per drafter, τ per (domain, benchmark), mean τ, speed-up."""
        columns = ["drafter"] + [f"{d} · {b}" for d, b in self.columns()] + ["mean τ", "speed-up", "greedy = AR"]
        rows = []
        for label in self.labels:
            taus = [getattr(self.group(label, d, b), "tau", None) for d, b in self.columns()]
            identical = self.greedy_identical(label)
            rows.append([label, *taus, self.mean_tau(label), self.overall(label).speedup,
                         "n/a (sampled)" if identical is None else identical])
        return columns, rows

    def position_table(self) -> tuple[list[str], list[list]]:
        """Conditional acceptance at each block position, per drafter, over the whole suite."""
        width = max(len(self.overall(label).cond_accept) for label in self.labels)
        columns = ["drafter"] + [f"@{k}" for k in range(1, width + 1)]
        rows = [[label] + [rate for rate, _ in self.overall(label).cond_accept]
                + [None] * (width - len(self.overall(label).cond_accept)) for label in self.labels]
        return columns, rows

    def metrics(self, label: str) -> dict[str, float]:
        """Scalar metrics of one drafter (what its tracking run records)."""
        overall = self.overall(label)
        values = {"mean_tau": self.mean_tau(label), "tau": overall.tau, "speedup": overall.speedup,
                  "tokens_per_s": overall.tokens_per_s}
        for domain, benchmark in self.columns():
            group = self.group(label, domain, benchmark)
            values[f"tau.{benchmark}.{domain}"] = group.tau if group else None
        values.update({f"cond_accept_{k}": rate for k, (rate, _) in enumerate(overall.cond_accept, 1)})
        return {name: float(value) for name, value in values.items() if value is not None}

    def acceptance_rows(self, *, base_model: str, recorded_at: datetime, run_id: str | None = None,
                        mlflow_run_ids: dict[str, str] | None = None,
                        draft_versions: dict[str, str] | None = None) -> list[AcceptanceRow]:
        """The long-form rows of every (drafter, benchmark) report; the benchmark column names the benchmark."""
        rows = []
        for label, by_benchmark in self.reports.items():
            for report in by_benchmark.values():
                rows += report.acceptance_rows(base_model=base_model, recorded_at=recorded_at, run_id=run_id,
                                               mlflow_run_id=(mlflow_run_ids or {}).get(label),
                                               draft_version=(draft_versions or {}).get(label))
        return rows

    def acceptance_plot(self, label: str, path: Path) -> Path:
        overall = self.overall(label)
        return acceptance_curves({"prefix acceptance": [r for r, _ in overall.prefix_accept],
                                  "conditional acceptance": [r for r, _ in overall.cond_accept]},
                                 path, title=f"{label} on {self.target_spec}, mean τ {self.mean_tau(label):.2f}")

    def to_json(self) -> dict:
        columns, rows = self.table()
        position_columns, position_rows = self.position_table()
        return {"target": self.target_spec, "temperature": self.config.temperature,
                "max_new_tokens": self.config.max_new_tokens,
                "benchmarks": {b.name: len(b.records) for b in self.benchmarks},
                "table": {"columns": columns, "rows": rows},
                "conditional_acceptance": {"columns": position_columns, "rows": position_rows},
                "drafters": {label: {"path": str(next(iter(by.values())).draft_path or ""),
                                     "block_size": next(iter(by.values())).block_size, **self.metrics(label)}
                             for label, by in self.reports.items()}}


def evaluate_suite(target: TargetModel, drafters: dict[str, Drafter | Path], benchmarks: list[Benchmark],
                   config: EvalConfig, *, progress: bool = False, other_target: bool = False) -> SuiteReport:
    """Decode at most `config.max_prompts` prompts of each benchmark (spread over its domains) autoregressively
    once, then with each drafter; one EvalReport per (drafter, benchmark), recorded under the benchmark's name.
    `other_target`: drafts trained for another model run unchanged (transfer tests; see `evaluate`)."""
    if not drafters:
        raise DsparkError("no drafter to evaluate; give at least one")
    selected = [b.selected(config.max_prompts) for b in benchmarks]
    report = SuiteReport(config, target.spec, selected, {label: {} for label in drafters})
    for benchmark in selected:
        prompts = eval_prompts(target, benchmark.records)
        settings = replace(config, benchmark=benchmark.name)
        baseline = None
        for label, drafter in drafters.items():
            result = evaluate(target, drafter, prompts, settings, baseline=baseline, progress=progress,
                              other_target=other_target)
            baseline = result.baseline
            report.reports[label][benchmark.name] = result
    return report

