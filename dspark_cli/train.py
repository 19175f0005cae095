"""`dspark train`: train a DSpark, DFlash or Eagle3 draft on a dataset's target feature cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dspark_cli.options import comma_ints, core_option
from dspark_core.data.sources import PromptsConfig
from dspark_core.models import load_target
from dspark_core.recipes.features import find_cache
from dspark_core.recipes.training import train
from dspark_core.training.losses import LossWeights
from dspark_core.training.trainer import TrainConfig

console = Console()


def train_command(
    target: str = typer.Option(..., "--target", help="The target model the draft serves."),
    drafter: str = core_option(TrainConfig, "algorithm", "--drafter"),
    dataset: str = core_option(PromptsConfig, "dataset", "--dataset"),
    layer_ids: Optional[str] = typer.Option(None, "--layer-ids", help="Which cache to use: its layers (default: the "
                                            "dataset's only cache)."),
    cache_dtype: Optional[str] = typer.Option(None, "--cache-dtype", help="Which cache to use: its dtype."),
    draft_layers: Optional[str] = typer.Option(None, "--draft-layers", help="Subset of the cache layers the draft reads "
                                               "(default: all; eagle3: low/mid/high)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: $DSPARK_HOME/checkpoints/<target>/"
                                       "<drafter>/<settings hash>)."),
    steps: int = core_option(TrainConfig, "steps", "--steps"),
    batch_size: int = core_option(TrainConfig, "batch_size", "--batch-size"),
    anchors: int = core_option(TrainConfig, "anchors_per_sequence", "--anchors"),
    max_length: int = core_option(TrainConfig, "max_length", "--max-length"),
    learning_rate: float = core_option(TrainConfig, "learning_rate", "--lr"),
    warmup: int = core_option(TrainConfig, "warmup_steps", "--warmup"),
    num_layers: int = core_option(TrainConfig, "num_layers", "--num-layers"),
    block_size: int = core_option(TrainConfig, "block_size", "--block-size"),
    head: str = core_option(TrainConfig, "head", "--head"),
    head_rank: int = core_option(TrainConfig, "head_rank", "--head-rank"),
    draft_vocab: int = core_option(TrainConfig, "draft_vocab_size", "--draft-vocab"),
    mask_token: str = core_option(TrainConfig, "mask_token", "--mask-token"),
    qk_norm: bool = core_option(TrainConfig, "qk_norm", "--qk-norm/--no-qk-norm"),
    anchor_state: bool = core_option(TrainConfig, "anchor_state", "--anchor-state/--no-anchor-state"),
    ce: float = core_option(LossWeights, "ce", "--alpha-ce"),
    tv: float = core_option(LossWeights, "tv", "--alpha-tv"),
    conf: float = core_option(LossWeights, "conf", "--alpha-conf"),
    decay: float = core_option(LossWeights, "decay", "--decay"),
    checkpoint_every: int = core_option(TrainConfig, "checkpoint_every", "--checkpoint-every"),
    log_every: int = core_option(TrainConfig, "log_every", "--log-every"),
    seed: int = core_option(TrainConfig, "seed", "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: auto)."),
) -> None:
    """Train a draft module (resumable: rerun the same command to continue a killed run)."""
    config = TrainConfig(
        algorithm=drafter, steps=steps, batch_size=batch_size, anchors_per_sequence=anchors, max_length=max_length,
        learning_rate=learning_rate, warmup_steps=warmup, num_layers=num_layers, block_size=block_size, head=head,
        head_rank=head_rank, draft_vocab_size=draft_vocab, mask_token=mask_token, qk_norm=qk_norm,
        anchor_state=anchor_state, loss=LossWeights(ce=ce, tv=tv, conf=conf, decay=decay),
        checkpoint_every=checkpoint_every, log_every=log_every, seed=seed, layer_ids=comma_ints(draft_layers),
    )
    model = load_target(target, device=device)
    cache = find_cache(model.spec, dataset, comma_ints(layer_ids), cache_dtype)
    report = train(model, cache, config, out_dir=out)
    table = Table(title=f"trained {drafter} for {target}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("checkpoint", str(report.checkpoint))
    table.add_row("steps", str(report.steps))
    for key in ("loss", "loss_ce", "loss_tv", "loss_conf", "expected_tau"):
        if key in report.final_metrics:
            table.add_row(key, f"{report.final_metrics[key]:.4f}")
    table.add_row("acceptance per position", " ".join("–" if a is None else f"{a:.2f}" for _, a in report.analytic_acceptance))
    console.print(table)
    console.print(f"decode with it: dspark generate --target {target} --drafter {report.checkpoint} --prompt ...")
