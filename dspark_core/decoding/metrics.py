"""Decoding statistics with the definitions the literature reports (docs/architecture.md, "Metrics").

Positions k are 1-based draft positions.
* tau: mean over rounds of tokens committed (accepted drafts + 1 bonus/replacement; a round that ends on
  EOS inside the accepted prefix counts its accepted tokens only).
* prefix_accept[k]: among rounds that proposed >= k tokens, the fraction that accepted >= k.
* cond_accept[k]: among rounds that proposed >= k tokens and accepted positions 1..k-1, the fraction that
  accepted position k too.
A round stopped by EOS at draft position j counts as having proposed j tokens (later ones were never judged).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class RoundRecord:
    """One request's verification round."""

    proposed: int  # draft tokens proposed (and judged)
    accepted: int  # draft tokens accepted
    emitted: int  # tokens committed this round
    #: the drafter's confidence c_k for each judged position (empty when it reports none)
    confidences: tuple[float, ...] = ()


def tau(records: list[RoundRecord]) -> float | None:
    return sum(r.emitted for r in records) / len(records) if records else None


def prefix_acceptance(records: list[RoundRecord], max_position: int) -> list[float | None]:
    rates: list[float | None] = []
    for k in range(1, max_position + 1):
        eligible = [r for r in records if r.proposed >= k]
        rates.append(sum(r.accepted >= k for r in eligible) / len(eligible) if eligible else None)
    return rates


def conditional_acceptance(records: list[RoundRecord], max_position: int) -> list[float | None]:
    rates: list[float | None] = []
    for k in range(1, max_position + 1):
        eligible = [r for r in records if r.proposed >= k and r.accepted >= k - 1]
        rates.append(sum(r.accepted >= k for r in eligible) / len(eligible) if eligible else None)
    return rates


@dataclass
class DecodingStats:
    """Aggregate statistics of one `generate` call (all requests together)."""

    requests: int = 0
    new_tokens: int = 0
    rounds: int = 0  # request-rounds (a batch round of R requests counts R)
    batch_rounds: int = 0  # target verification passes
    tau: float | None = None
    prefix_accept: list[float | None] = field(default_factory=list)
    cond_accept: list[float | None] = field(default_factory=list)
    wall_s: float = 0.0
    prefill_ms: float = 0.0  # processing the prompts (a separate pass, or the first round's pass)
    draft_ms_per_round: float = 0.0
    verify_ms_per_round: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tokens_per_s"] = self.tokens_per_s
        return data


def summarize(
    records: list[RoundRecord],
    *,
    requests: int,
    batch_rounds: int,
    wall_s: float,
    timed_rounds: int | None = None,
    prefill_s: float,
    draft_s: float,
    verify_s: float,
) -> DecodingStats:
    """`timed_rounds`: batch rounds whose draft/verify time was recorded (a first round that also processed
    the prompts is counted as prefill instead); defaults to all batch rounds."""
    max_position = max((r.proposed for r in records), default=0)
    timed = batch_rounds if timed_rounds is None else timed_rounds
    return DecodingStats(
        requests=requests,
        new_tokens=sum(r.emitted for r in records),
        rounds=len(records),
        batch_rounds=batch_rounds,
        tau=tau(records),
        prefix_accept=prefix_acceptance(records, max_position),
        cond_accept=conditional_acceptance(records, max_position),
        wall_s=wall_s,
        prefill_ms=prefill_s * 1e3,
        draft_ms_per_round=draft_s * 1e3 / timed if timed else 0.0,
        verify_ms_per_round=verify_s * 1e3 / timed if timed else 0.0,
    )
