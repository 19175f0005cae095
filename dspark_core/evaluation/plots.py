"""PNG plots for the UI and MLflow: the training loss curve and per-position acceptance curves."""

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
