"""Turn an evaluation's group summaries into long-form acceptance_metrics rows."""

from __future__ import annotations

from dataclasses import replace

from dspark_core.evaluation.speculative import GroupSummary
from dspark_core.store.acceptance import AcceptanceRow


def acceptance_rows(shared: AcceptanceRow, summaries: list[GroupSummary]) -> list[AcceptanceRow]:
    """One row per measured value; `shared` carries what every row of the measurement has in common."""
    rows = []

    def add(summary: GroupSummary, metric: str, value, n, position=None) -> None:
        rows.append(replace(shared, domain=summary.domain, context_bucket=summary.context_bucket, metric=metric,
                            position=position, value=None if value is None else float(value), n=n))

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
