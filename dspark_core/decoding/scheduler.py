"""How many of its drafted tokens each request verifies this round (docs/architecture.md, "Verification
scheduling").

A drafter with a confidence head reports c_k per drafted position: the probability that position k is
accepted given that positions 1..k-1 were. The predicted survival of position j is a_j = c_1 * ... * c_j, the
expected number of accepted drafts when verifying ℓ of them is a_1 + ... + a_ℓ. Three modes:

* `fixed`: verify everything drafted (up to the block size);
* `threshold`: verify position j while a_j >= a static threshold;
* `scheduled`: the hardware-aware greedy admission — maximise expected committed tokens per second,
  Θ = τ / cost(lengths), where the engine's cost is the round's drafting time plus the measured cost of the
  verification pass (`StepCostProfile`).

Every mode is lossless because the decision to verify position j depends only on a_1..a_j, and c_j is
computed before x_j is drawn (it reads x_{j-1}): nothing about the token being judged, or any later one,
enters the decision. That is why the admission stops at the first candidate that does not improve Θ;
looking further ahead (`early_stop=False`, kept only to show the difference) would let the verdict on
position j depend on c_{j+1}, which reads x_j, and bias sampled output.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from itertools import accumulate, takewhile
from typing import Callable, Sequence

from dspark_core.errors import ConfigError
from dspark_core.settings import check_settings, setting

SCHEDULE_MODES = ("fixed", "threshold", "scheduled")

#: seconds of one verification pass for the per-request verified lengths of a round
PassCost = Callable[[Sequence[int]], float]


@dataclass(frozen=True)
class ScheduleConfig:
    mode: str = setting("fixed", "How many drafted tokens to verify per request and round: fixed (all), threshold "
                                 "(while the predicted survival is at least --threshold) or scheduled (the length "
                                 "that maximises expected tokens per second of the measured step-cost profile)", choices=SCHEDULE_MODES)
    threshold: float = setting(0.3, "Threshold mode: verify a draft position while the product of the confidences "
                                    "up to it is at least this", min=0, max=1)

    def __post_init__(self) -> None:
        check_settings(self)


def survival(confidences: Sequence[Sequence[float]]) -> list[list[float]]:
    """Per request, a_j = c_1 * ... * c_j for every drafted position j."""
    return [list(accumulate((float(c) for c in row), operator.mul)) for row in confidences]


def threshold_lengths(survivals: Sequence[Sequence[float]], threshold: float) -> list[int]:
    """Per request, the longest prefix whose survival stays at or above `threshold` (survival never grows
    along a block, so this is the count of positions at or above it)."""
    return [sum(1 for _ in takewhile(lambda value: value >= threshold, row)) for row in survivals]


def schedule_lengths(survivals: Sequence[Sequence[float]], cost: PassCost, *, early_stop: bool = True) -> list[int]:
    """Greedy admission: per request, how many drafted positions to verify.

    Every request verifies at least its anchor (one token). Candidates (r, j) are taken in order of survival
    a_{r,j}, highest first (ties: earlier position, then earlier request, so a request's positions come in
    order). Admitting one adds a_{r,j} to the expected committed tokens τ and changes the pass cost;
    admission goes on while Θ = τ / cost(lengths) improves and stops at the first candidate that does not
    improve it. `early_stop=False` instead evaluates every prefix of the ordered candidates and keeps the
    best: the anticipating variant, which is *not* lossless (see the module docstring).
    """
    lengths = [0] * len(survivals)
    if not lengths:
        return lengths
    candidates = sorted(
        ((value, j, r) for r, row in enumerate(survivals) for j, value in enumerate(row, start=1)),
        key=lambda c: (-c[0], c[1], c[2]),
    )
    expected = float(len(lengths))
    best = expected / cost(lengths)
    best_lengths = list(lengths)
    for value, j, r in candidates:
        lengths[r] = j
        expected += value
        throughput = expected / cost(lengths)
        if throughput > best:
            best, best_lengths = throughput, list(lengths)
        elif early_stop:
            break
    return best_lengths


def verified_lengths(config: ScheduleConfig, confidences: Sequence[Sequence[float]] | None, drafted: Sequence[int],
                     cost: PassCost | None) -> list[int]:
    """The lengths a round verifies: `drafted` in fixed mode or without confidences, else the mode's choice
    (never more than drafted)."""
    if config.mode == "fixed" or confidences is None:
        return list(drafted)
    survivals = survival([row[:n] for row, n in zip(confidences, drafted)])
    if config.mode == "threshold":
        return threshold_lengths(survivals, config.threshold)
    if cost is None:
        raise ConfigError("scheduled verification needs a step-cost profile of the target "
                          "(`dspark profile`, or dspark_core.decoding.step_cost.ensure_profile)")
    return schedule_lengths(survivals, cost)

