"""`dspark train`: train a DSpark, DFlash or Eagle3 draft on a dataset's target feature cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dspark_core.data import layout
from dspark_core.data.feature_cache import FeatureCache, default_layer_ids, tokenizer_hash
from dspark_core.models import load_target
from dspark_core.models.spec import slugify
from dspark_core.paths import dspark_home
from dspark_core.training.losses import LossWeights
from dspark_core.training.trainer import TrainConfig, train_draft

console = Console()


def train_command(
    target: str = typer.Option(..., "--target", help="The target model the draft serves."),
    drafter: str = typer.Option("dspark", "--drafter", help="dspark, dflash or eagle3."),
    dataset: str = typer.Option("default", "--dataset", help="Dataset whose feature cache to train on."),
    layer_ids: Optional[str] = typer.Option(None, "--layer-ids", help="Cache layers (default: 5 spread over depth)."),
    draft_layers: Optional[str] = typer.Option(None, "--draft-layers",
                                               help="Subset of the cache layers the draft reads (default: all; eagle3: low/mid/high)."),
    cache_dtype: str = typer.Option("bfloat16", "--cache-dtype", help="dtype the cache was built with."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default under $DSPARK_HOME/drafts)."),
    steps: int = typer.Option(300, "--steps"),
    batch_size: int = typer.Option(4, "--batch-size", help="Sequences per step."),
    anchors: int = typer.Option(16, "--anchors", help="Anchors (blocks) sampled per sequence."),
    learning_rate: float = typer.Option(6e-4, "--lr"),
    warmup: int = typer.Option(20, "--warmup"),
    num_layers: int = typer.Option(1, "--num-layers", help="Draft backbone depth."),
    block_size: int = typer.Option(7, "--block-size", help="γ: tokens proposed per block."),
    head: str = typer.Option("markov", "--head", help="DSpark sequential head: markov, gated or rnn."),
    head_rank: int = typer.Option(256, "--head-rank"),
    draft_vocab: int = typer.Option(8192, "--draft-vocab", help="Draft vocabulary size (most frequent tokens)."),
    ce: float = typer.Option(0.1, "--alpha-ce"),
    tv: float = typer.Option(0.9, "--alpha-tv"),
    conf: float = typer.Option(1.0, "--alpha-conf"),
    decay: float = typer.Option(4.0, "--decay", help="g in the position weights exp(-(k-1)/g)."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every"),
    log_every: int = typer.Option(10, "--log-every"),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Train a draft module (resumable: rerun the same command to continue a killed run)."""
    model = load_target(target, device=device)
    layers = tuple(int(x) for x in layer_ids.split(",")) if layer_ids else default_layer_ids(model.num_layers)
    cache = FeatureCache(layout.cache_dir(dataset, target, layers, cache_dtype), target_revision=model.revision,
                         layer_ids=layers, tokenizer=tokenizer_hash(model.tokenizer), split="train")
    config = TrainConfig(
        algorithm=drafter, steps=steps, batch_size=batch_size, anchors_per_sequence=anchors,
        learning_rate=learning_rate, warmup_steps=warmup, num_layers=num_layers, block_size=block_size, head=head,
        head_rank=head_rank, draft_vocab_size=draft_vocab, loss=LossWeights(ce=ce, tv=tv, conf=conf, decay=decay),
        checkpoint_every=checkpoint_every, log_every=log_every, seed=seed,
        layer_ids=tuple(int(x) for x in draft_layers.split(",")) if draft_layers else None,
    )
    run_dir = out or dspark_home() / "drafts" / slugify(target) / f"{drafter}-{slugify(dataset)}"
    result = train_draft(model, cache, run_dir, config)
    table = Table(title=f"trained {drafter} for {target}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("steps", str(result.steps))
    for key in ("loss", "loss_ce", "loss_tv", "loss_conf", "expected_tau"):
        if key in result.final_metrics:
            table.add_row(key, f"{result.final_metrics[key]:.4f}")
    accept = [result.final_metrics[k] for k in sorted(result.final_metrics) if k.startswith("accept_")]
    table.add_row("acceptance per position", " ".join(f"{a:.2f}" for a in accept))
    console.print(table)
    console.print(f"decode with it: dspark generate --target {target} --drafter {result.checkpoint} --prompt ...")
