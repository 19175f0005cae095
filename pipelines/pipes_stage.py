"""The child side of a heavy stage launched through Dagster Pipes (`pipelines/launchers.py`).

`python -m pipelines.pipes_stage train|cache` runs one stage with the settings the asset sent as Pipes extras:
alone, as N ranks under `torchrun`, or in a Kubernetes pod. It imports the library and `dagster-pipes` only (not
Dagster), so the image that runs it needs neither the Dagster instance nor the code location. Every rank reads the
extras from the Pipes context; only rank 0 opens the message channel and reports back: log lines, a custom message
for each logged training step (every `log_every` steps) whose number is a multiple of `report_every` (the step's
losses and expected τ), the stage's report, and the materialization's metadata. The asset turns those into the materialization and the MLflow run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

STAGES = ("train", "cache")


def context_extras() -> dict:
    """The extras of the Pipes context this process was started with (any rank may read them)."""
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader

    params = PipesEnvVarParamsLoader().load_context_params()
    with PipesDefaultContextLoader().load_context(params) as data:
        return dict(data.get("extras") or {})


def run_stage(stage: str, extras: dict, pipes=None):
    """Run `stage` with `extras` under the process group torchrun describes (a world of one without torchrun);
    report through `pipes` (rank 0's Pipes context, None on other ranks). Returns the stage's report."""
    from dspark_core.distributed import process_group, rank_device
    from dspark_core.models import load_target

    device = extras.get("device", "auto")
    with process_group(device) as world:
        with world.main_first():  # rank 0 imports the snapshot once; the others then load it
            target = load_target(extras["target"], device=rank_device(device), dtype=extras.get("dtype", "auto"),
                                 for_data=stage == "cache")
        if pipes is not None:
            pipes.log.info(f"{stage} for {extras['target']} on {world.size} rank(s), device {target.device}")
        report = _train(target, extras, pipes) if stage == "train" else _cache(target, extras)
    if pipes is not None:
        pipes.report_custom_message({"report": report.to_json(), "ranks": world.size})
        pipes.report_asset_materialization(metadata=_metadata(stage, report, world.size))
    return report


def _train(target, extras: dict, pipes):
    from dspark_core.recipes.training import train
    from dspark_core.training.presets import train_config

    config = train_config(extras["training"])
    every = max(1, int(extras.get("report_every", 10)))

    def on_log(step: int, metrics: dict) -> None:
        if pipes is None:
            return
        if step % every == 0 or step == config.steps:
            pipes.report_custom_message({"step": step, **{k: float(v) for k, v in metrics.items()
                                                          if isinstance(v, (int, float))}})
        if step % 50 == 0 or step == config.steps:
            pipes.log.info(f"step {step}/{config.steps}: loss {metrics['loss']:.4f}, "
                           f"expected τ {metrics['expected_tau']:.2f}")

    return train(target, Path(extras["cache"]), config, on_log=on_log, progress=False)


def _cache(target, extras: dict):
    from dspark_core.data.feature_cache import CacheConfig
    from dspark_core.recipes.features import build_cache

    settings = {name: tuple(v) if isinstance(v, list) else v for name, v in extras["cache_config"].items()}
    return build_cache(target, extras["dataset"], CacheConfig(**settings), progress=False)


def _metadata(stage: str, report, ranks: int) -> dict:
    """What the child itself says of its result (plain values; the asset adds the rest)."""
    if stage == "train":
        final = report.final_metrics
        values = {"steps": report.steps, "final_loss": final.get("loss"), "expected_tau": final.get("expected_tau"),
                  "held_out_tau": final.get("val_tau"), "cumulative_steps": report.cumulative_steps,
                  "checkpoint": str(report.checkpoint)}
    else:
        values = {"samples": report.samples, "tokens": report.tokens, "shards": report.shards,
                  "size_mib": report.size_mib}
    return {"ranks": ranks, **{k: v for k, v in values.items() if v is not None}}


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1 or arguments[0] not in STAGES:
        print(f"usage: python -m pipelines.pipes_stage {{{'|'.join(STAGES)}}} (started by Dagster Pipes)",
              file=sys.stderr)
        return 2
    stage = arguments[0]
    if int(os.environ.get("RANK", "0")) != 0:
        run_stage(stage, context_extras())
        return 0
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        run_stage(stage, dict(pipes.extras), pipes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
