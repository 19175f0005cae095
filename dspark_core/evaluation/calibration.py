"""How well a draft's confidences predict acceptance, and sequential temperature scaling (docs/architecture.md,
"Confidence calibration").

A round that judged positions 1..n gives, for every k <= n, one sample: the predicted survival
a_k = c_1 * ... * c_k and the event "positions 1..k were all accepted". Per position: ECE (equal-width bins),
AUROC, Brier score, mean predicted vs observed, and the reliability bins behind the diagram.

Sequential temperature scaling fits T_1..T_γ left to right: T_k is the value on a log-spaced grid that
minimises the ECE of a_k with c_i = σ(logit_i / T_i), T_1..T_{k-1} already fixed. A temperature cannot move a
confidence of 0.5 (logit 0), so a head that is biased — predicting 0.4 where 0.2 survive — stays biased; the
`affine` method fits a shift b_k beside T_k (c_i = σ(logit_i / T_i + b_i), a 2-D grid). With two parameters ECE
is no longer a usable objective: a flat prediction at the observed rate has an ECE near 0 and tells the
scheduler nothing, so the affine fit minimises the Brier score (a proper scoring rule: calibrated *and* sharp).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from sklearn.metrics import brier_score_loss, roc_auc_score

from dspark_core.decoding.metrics import RoundRecord
from dspark_core.errors import DsparkError

#: temperatures searched by STS: 0.05 .. 20, log-spaced
TEMPERATURE_GRID = np.geomspace(0.05, 20.0, 241)
#: the coarser grids of the affine method (temperature × shift)
AFFINE_TEMPERATURES = np.geomspace(0.05, 20.0, 61)
AFFINE_SHIFTS = np.linspace(-5.0, 5.0, 81)
DEFAULT_BINS = 10
METHODS = ("temperature", "affine")


@dataclass
class PositionSamples:
    """Confidence logits of positions 1..k of every round that judged position k, and whether 1..k survived."""

    logits: np.ndarray  # [n, k] float64: logit(c_1) .. logit(c_k) of each round
    survived: np.ndarray  # [n] bool

    def survival(self, temperatures: Sequence[float] = (), shifts: Sequence[float] = ()) -> np.ndarray:
        """Predicted a_k of each round, with c_i = σ(logit_i / T_i + b_i) (T_i = 1 and b_i = 0 past the given)."""
        k = self.logits.shape[1]
        scale, shift = np.ones(k), np.zeros(k)
        scale[: min(k, len(temperatures))] = temperatures[:k]
        shift[: min(k, len(shifts))] = shifts[:k]
        return np.prod(1.0 / (1.0 + np.exp(-(self.logits / scale + shift))), axis=1)


def position_samples(records: Iterable[RoundRecord], max_position: int | None = None) -> list[PositionSamples]:
    """One `PositionSamples` per draft position 1..K from rounds that recorded confidences."""
    rows = [(np.asarray(r.confidences, dtype=np.float64), r.accepted) for r in records if r.confidences]
    depth = max((len(c) for c, _ in rows), default=0)
    if max_position is not None:
        depth = min(depth, max_position)
    samples = []
    for k in range(1, depth + 1):
        eligible = [(c[:k], accepted >= k) for c, accepted in rows if len(c) >= k]
        c = np.clip(np.stack([e[0] for e in eligible]), 1e-7, 1 - 1e-7)
        samples.append(PositionSamples(np.log(c) - np.log1p(-c), np.array([e[1] for e in eligible], dtype=bool)))
    return samples


def expected_calibration_error(predicted: np.ndarray, observed: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """Σ_b (n_b / n) · |mean predicted_b − observed rate_b| over equal-width bins of [0, 1]."""
    index = np.clip((predicted * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, predicted, bins) - np.bincount(index, observed.astype(float), bins))
    return float(gap.sum() / max(counts.sum(), 1))


def reliability_bins(predicted: np.ndarray, observed: np.ndarray, bins: int = DEFAULT_BINS) -> list[dict]:
    """Per equal-width bin: its range, count, mean predicted and observed rate (the reliability diagram)."""
    index = np.clip((predicted * bins).astype(int), 0, bins - 1)
    out = []
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        out.append({"low": b / bins, "high": (b + 1) / bins, "count": n,
                    "predicted": float(predicted[members].mean()) if n else None,
                    "observed": float(observed[members].mean()) if n else None})
    return out


@dataclass(frozen=True)
class CalibrationMetrics:
    position: int
    n: int
    ece: float
    auroc: float | None  # None when every sample had the same outcome
    brier: float
    mean_predicted: float
    observed_rate: float

    def as_dict(self) -> dict:
        return {"position": self.position, "n": self.n, "ece": self.ece, "auroc": self.auroc, "brier": self.brier,
                "mean_predicted": self.mean_predicted, "observed_rate": self.observed_rate}


def calibration_metrics(samples: list[PositionSamples], temperatures: Sequence[float] = (), shifts: Sequence[float] = (),
                        bins: int = DEFAULT_BINS) -> list[CalibrationMetrics]:
    """ECE, AUROC, Brier score, mean predicted and observed survival per position."""
    metrics = []
    for k, sample in enumerate(samples, start=1):
        predicted, observed = sample.survival(temperatures, shifts), sample.survived
        both_outcomes = 0 < observed.sum() < len(observed)
        metrics.append(CalibrationMetrics(
            position=k, n=len(observed), ece=expected_calibration_error(predicted, observed, bins),
            auroc=float(roc_auc_score(observed, predicted)) if both_outcomes else None,
            brier=float(brier_score_loss(observed, predicted)), mean_predicted=float(predicted.mean()),
            observed_rate=float(observed.mean())))
    return metrics


def fit_temperatures(samples: list[PositionSamples], bins: int = DEFAULT_BINS, method: str = "temperature"
                     ) -> tuple[list[float], list[float]]:
    """Sequential scaling, left to right: (T_1..T_K, b_1..b_K) where (T_k, b_k) minimises the error of a_k with the
    earlier positions' values fixed: for the `temperature` method (STS) b_k = 0 and the error is the ECE, for the
    `affine` method the Brier score (see the module docstring). Ties go to the smallest change (T closest to 1,
    then b closest to 0)."""
    if method not in METHODS:
        raise DsparkError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    if not samples:
        raise DsparkError("no confidence samples to calibrate on: decode with a drafter that has a confidence head")
    temperatures, grid_t = [], TEMPERATURE_GRID if method == "temperature" else AFFINE_TEMPERATURES
    shifts: list[float] = []
    grid_b = np.zeros(1) if method == "temperature" else AFFINE_SHIFTS
    for sample in samples:
        earlier = PositionSamples(sample.logits[:, :-1], sample.survived).survival(temperatures, shifts)
        last = sample.logits[:, -1]
        best, choice = np.inf, (1.0, 0.0)
        for t in grid_t:
            for b in grid_b:
                predicted = earlier / (1.0 + np.exp(-(last / t + b)))
                error = (expected_calibration_error(predicted, sample.survived, bins) if method == "temperature"
                         else float(np.mean((predicted - sample.survived) ** 2)))
                change = (abs(np.log(t)), abs(b))
                if error < best - 1e-12 or (error <= best + 1e-12 and change < (abs(np.log(choice[0])), abs(choice[1]))):
                    best, choice = min(best, error), (float(t), float(b))
        temperatures.append(choice[0])
        shifts.append(choice[1])
    return temperatures, shifts
