"""PNG plots for the UI and MLflow: the training loss curve, per-position acceptance curves and heat maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(figure)
    tmp.replace(path)
    return path


def loss_curve(history: list[dict], path: Path, title: str = "training loss") -> Path:
    """Total loss and each term per logged step; analytic expected τ on a second axis."""
    figure, axis = plt.subplots(figsize=(6, 3.4))
    steps = [h["step"] for h in history]
    for key, style in (("loss", "-"), ("loss_ce", "--"), ("loss_tv", ":"), ("loss_conf", "-.")):
        if history and key in history[0]:
            axis.plot(steps, [h[key] for h in history], style, label=key)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    if history and "expected_tau" in history[0]:
        twin = axis.twinx()
        twin.plot(steps, [h["expected_tau"] for h in history], color="tab:gray", alpha=0.6, label="expected τ")
        twin.set_ylabel("expected τ")
    axis.legend(loc="upper right", fontsize=8)
    return _save(figure, path)


def acceptance_curves(curves: dict[str, list[float | None] | dict[int, float]], path: Path,
                      title: str = "acceptance by draft position") -> Path:
    """One line per name: the acceptance rate per draft position, given as a list for positions 1..k
    (None = not measured) or as {position: rate}."""
    figure, axis = plt.subplots(figsize=(6, 3.4))
    for name, rates in curves.items():
        by_position = rates if isinstance(rates, dict) else dict(enumerate(rates, start=1))
        points = sorted((k, rate) for k, rate in by_position.items() if rate is not None)
        if points:
            axis.plot(*zip(*points), marker="o", label=name)
    axis.set_xlabel("draft position k")
    axis.set_ylabel("acceptance rate")
    axis.set_ylim(0, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if curves:
        axis.legend(fontsize=8)
    return _save(figure, path)


#: fewest rounds in a bin for the reliability diagram to draw it
MIN_BIN = 5


def reliability_diagrams(curves: dict[str, list[list[dict]]], path: Path, title: str = "confidence reliability") -> Path:
    """One panel per draft position: observed survival against mean predicted survival per bin, one line per
    name (e.g. before / after calibration); bins as `calibration.reliability_bins` gives them. Bins of fewer than
    `MIN_BIN` rounds are left out (one or two rounds make spikes that say nothing)."""
    positions = max((len(bins) for bins in curves.values()), default=0)
    figure, axes = plt.subplots(1, max(positions, 1), figsize=(2.6 * max(positions, 1), 2.8), squeeze=False)
    for k in range(positions):
        axis = axes[0][k]
        axis.plot([0, 1], [0, 1], color="tab:gray", linewidth=0.8, linestyle=":")
        for name, per_position in curves.items():
            points = ([(b["predicted"], b["observed"]) for b in per_position[k] if b["count"] >= MIN_BIN]
                      if k < len(per_position) else [])
            if points:
                axis.plot(*zip(*points), marker="o", markersize=3, label=name)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_title(f"position {k + 1}", fontsize=9)
        axis.set_xlabel("predicted ∏c", fontsize=8)
        if k == 0:
            axis.set_ylabel("observed survival", fontsize=8)
            axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=10, y=1.04)
    return _save(figure, path)


def pareto_plot(series: dict[str, list[tuple[float, float, str]]], path: Path,
                title: str = "throughput vs interactivity") -> Path:
    """Aggregate tokens/s against per-user tokens/s, one line per method, each point labelled (e.g. R = 4)."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        if not points:
            continue
        points = sorted(points, key=lambda p: p[0])
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        for x, y, label in points:
            axis.annotate(label, (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    axis.set_xlabel("per-user tokens/s (interactivity)")
    axis.set_ylabel("aggregate tokens/s (throughput)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)


def heat_map(values: list[list[float | None]], rows: list[str], columns: list[str], path: Path,
             title: str = "") -> Path:
    """A matrix of values (None: not measured) as a labelled heat map, each cell annotated."""
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    figure, axis = plt.subplots(figsize=(1.6 + 1.5 * len(columns), 0.9 + 0.55 * len(rows)))
    image = axis.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=20, ha="right", fontsize=8)
    axis.set_yticks(range(len(rows)), rows, fontsize=8)
    for i, row in enumerate(data):
        for j, value in enumerate(row):
            axis.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8,
                      color="gray" if np.isnan(value) else "white" if value < np.nanmean(data) else "black")
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set_title(title, fontsize=9)
    return _save(figure, path)


def sweep_curves(lengths: list[float], series: dict[str, list[float | None]], path: Path, *,
                 trained_length: int | None = None, title: str = "") -> Path:
    """Metrics against prompt length (log scale), with the draft's training sequence length marked."""
    figure, axis = plt.subplots(figsize=(6, 3.4))
    for name, values in series.items():
        points = [(x, y) for x, y in zip(lengths, values) if y is not None]
        axis.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
    if trained_length:
        axis.axvline(trained_length, color="tab:gray", linestyle="--", label=f"trained on ≤ {trained_length} tokens")
    axis.axhline(1.0, color="black", linewidth=0.6)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("prompt tokens")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    return _save(figure, path)


def tau_over_training(series: dict[str, list[tuple[float, float, str | None]]], path: Path,
                      title: str = "τ against the training its line of drafts had") -> Path:
    """One line per name (base model · drafter · benchmark): (cumulative training steps, τ, version) per
    evaluated draft; each point is labelled with its registered version."""
    figure, axis = plt.subplots(figsize=(6, 3.4))
    for name, points in series.items():
        points = sorted((p for p in points if p[0] is not None and p[1] is not None), key=lambda p: (p[0], p[1]))
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
            for steps, tau, version in points:
                if version:
                    axis.annotate(f"v{version}", (steps, tau), textcoords="offset points", xytext=(3, 4), fontsize=7)
    axis.set_xlabel("training steps over the draft's line (cumulative)")
    axis.set_ylabel("τ (accepted tokens per round)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if series:
        axis.legend(fontsize=8)
    return _save(figure, path)
