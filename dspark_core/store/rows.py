"""Turn an evaluation's group summaries into long-form acceptance_metrics rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dspark_core.evaluation.speculative import GroupSummary
from dspark_core.store.acceptance import AcceptanceRow


@dataclass(frozen=True)
class MeasurementContext:
    """What every row of one measurement shares."""

    recorded_at: datetime
    measurement_key: str
    run_id: str | None
    mlflow_run_id: str | None
    base_model: str
    base_model_revision: str | None
    drafter: str
    draft_checkpoint: str | None
    draft_version: str | None
    benchmark: str
    temperature: float
    block_size: int
    code_version: str | None


def acceptance_rows(context: MeasurementContext, summaries: list[GroupSummary]) -> list[AcceptanceRow]:
    rows = []

    def add(summary: GroupSummary, metric: str, value, n, position=None) -> None:
        rows.append(AcceptanceRow(
            context.recorded_at, context.measurement_key, context.run_id, context.mlflow_run_id, context.base_model,
            context.base_model_revision, context.drafter, context.draft_checkpoint, context.draft_version,
            context.benchmark, summary.domain, context.temperature, context.block_size, summary.context_bucket,
            metric, position, None if value is None else float(value), n, context.code_version,
        ))

    for s in summaries:
        add(s, "tau", s.tau, s.rounds)
        add(s, "tokens_per_s", s.tokens_per_s, s.new_tokens)
        if s.speedup is not None:
            add(s, "speedup", s.speedup, s.new_tokens)
        add(s, "draft_ms_per_round", s.draft_ms_per_round, s.rounds)
        add(s, "verify_ms_per_round", s.verify_ms_per_round, s.rounds)
        for metric, rates in (("prefix_accept", s.prefix_accept), ("cond_accept", s.cond_accept)):
            for k, (rate, eligible) in enumerate(rates, start=1):
                if rate is not None:
                    add(s, metric, rate, eligible, position=k)
    return rows
