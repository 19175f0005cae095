"""`dspark train`: train a DSpark, DFlash or Eagle3 draft on a dataset's target feature cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dspark_cli.options import comma_ints, core_option, one_of
from dspark_cli.output import cell, literal
from dspark_cli.ranks import nproc_option, relaunched
from dspark_core.data.feature_cache import CacheConfig
from dspark_core.data.layout import responses_dir as responses_dir_of
from dspark_core.data.sources import PromptsConfig
from dspark_core.distributed import World, check_nproc, process_group, rank_device
from dspark_core.models import load_target
from dspark_core.recipes.features import find_cache
from dspark_core.recipes.training import train
from dspark_core.training.losses import LossWeights
from dspark_core.training.parallel import ParallelConfig
from dspark_core.training.presets import PRESET_HELP, PRESETS, preset_config
from dspark_core.training.trainer import TrainConfig
from dspark_core.training.warm_start import parent_settings, read_parent

console = Console()


def train_command(
    ctx: typer.Context,
    target: str = typer.Option(..., "--target", help="The target model the draft serves."),
    drafter: str = core_option(TrainConfig, "algorithm", "--drafter"),
    preset: str = typer.Option("cpu", "--preset", help=PRESET_HELP + ".", parser=one_of(PRESETS)),
    dataset: str = core_option(PromptsConfig, "dataset", "--dataset"),
    layer_ids: Optional[str] = typer.Option(None, "--layer-ids", help="Which cache to use: its layers (default: the "
                                            "dataset's only cache). With --online-features: the target layers to "
                                            "compute (default: 5 spread over the depth)."),
    cache_dtype: Optional[str] = typer.Option(None, "--cache-dtype", help="Which cache to use: its dtype. With "
                                              "--online-features: the precision features are rounded to, as a cache "
                                              "would store them (default: bfloat16)."),
    online_features: bool = typer.Option(False, "--online-features", help="No feature cache: the target runs beside "
                                         "the draft and computes each batch's features (for caches too large for the "
                                         "disk; one extra target forward pass per micro-batch)."),
    draft_layers: Optional[str] = typer.Option(None, "--draft-layers", help="Subset of the cache layers the draft reads "
                                               "(default: all; eagle3: low/mid/high)."),
    warm_start: Optional[Path] = typer.Option(None, "--warm-start", help="Continue from this draft (a checkpoint's "
                                              "`draft` folder or an export, e.g. the champion's): its weights, "
                                              "vocabulary and shape (depth, block, head, layers) unless given here; "
                                              "the optimizer starts afresh."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: $DSPARK_HOME/checkpoints/<target>/"
                                       "<drafter>/<settings hash>)."),
    steps: int = core_option(TrainConfig, "steps", "--steps"),
    batch_size: int = core_option(TrainConfig, "batch_size", "--batch-size"),
    anchors: int = core_option(TrainConfig, "anchors_per_sequence", "--anchors"),
    max_length: int = core_option(TrainConfig, "max_length", "--max-length"),
    learning_rate: float = core_option(TrainConfig, "learning_rate", "--lr"),
    warmup: int = core_option(TrainConfig, "warmup_steps", "--warmup"),
    warmup_ratio: Optional[float] = core_option(TrainConfig, "warmup_ratio", "--warmup-ratio"),
    weight_decay: float = core_option(TrainConfig, "weight_decay", "--weight-decay"),
    adam_beta1: float = core_option(TrainConfig, "adam_beta1", "--adam-beta1"),
    adam_beta2: float = core_option(TrainConfig, "adam_beta2", "--adam-beta2"),
    num_layers: int = core_option(TrainConfig, "num_layers", "--num-layers"),
    block_size: int = core_option(TrainConfig, "block_size", "--block-size"),
    head: str = core_option(TrainConfig, "head", "--head"),
    head_rank: int = core_option(TrainConfig, "head_rank", "--head-rank"),
    draft_vocab: int = core_option(TrainConfig, "draft_vocab_size", "--draft-vocab"),
    mask_token: str = core_option(TrainConfig, "mask_token", "--mask-token"),
    qk_norm: bool = core_option(TrainConfig, "qk_norm", "--qk-norm/--no-qk-norm"),
    anchor_state: bool = core_option(TrainConfig, "anchor_state", "--anchor-state/--no-anchor-state"),
    sample_from_anchor: Optional[bool] = core_option(TrainConfig, "sample_from_anchor",
                                           "--sample-from-anchor/--no-sample-from-anchor"),
    ce: float = core_option(LossWeights, "ce", "--alpha-ce"),
    tv: float = core_option(LossWeights, "tv", "--alpha-tv"),
    conf: float = core_option(LossWeights, "conf", "--alpha-conf"),
    decay: float = core_option(LossWeights, "decay", "--decay"),
    feature: float = core_option(LossWeights, "feature", "--alpha-feature"),
    ce_target: str = core_option(LossWeights, "ce_target", "--ce-target"),
    checkpoint_every: int = core_option(TrainConfig, "checkpoint_every", "--checkpoint-every"),
    log_every: int = core_option(TrainConfig, "log_every", "--log-every"),
    autocast: str = core_option(TrainConfig, "autocast", "--autocast"),
    compile_step: bool = core_option(TrainConfig, "compile", "--compile/--no-compile"),
    seed: int = core_option(TrainConfig, "seed", "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: auto; under "
                                         "torchrun each rank's own GPU)."),
    nproc: Optional[int] = nproc_option(),
    strategy: str = core_option(ParallelConfig, "strategy", "--parallel"),
    micro_batch: Optional[int] = core_option(ParallelConfig, "micro_batch_size", "--micro-batch"),
) -> None:
    """Train a draft module (resumable: rerun the same command to continue a killed run, on any number of
    ranks). --batch-size is the global batch: the same on one process or many."""
    parallel = ParallelConfig(strategy=strategy, micro_batch_size=micro_batch)
    # the settings given on the command line; the preset fills the rest (its own, or the defaults)
    given = _given(ctx, {
        "algorithm": drafter, "steps": steps, "batch_size": batch_size, "anchors_per_sequence": anchors,
        "max_length": max_length, "learning_rate": learning_rate, "warmup_steps": warmup, "warmup_ratio": warmup_ratio,
        "weight_decay": weight_decay, "adam_beta1": adam_beta1, "adam_beta2": adam_beta2, "num_layers": num_layers,
        "block_size": block_size, "head": head, "head_rank": head_rank, "draft_vocab_size": draft_vocab,
        "mask_token": mask_token, "qk_norm": qk_norm, "anchor_state": anchor_state,
        "sample_from_anchor": sample_from_anchor, "checkpoint_every": checkpoint_every, "log_every": log_every,
        "autocast": autocast, "compile": compile_step, "seed": seed, "layer_ids": comma_ints(draft_layers)},
        {"ce": ce, "tv": tv, "conf": conf, "decay": decay, "feature": feature, "ce_target": ce_target})
    if warm_start is not None:  # the parent's shape fills what the command line left unset
        parent = read_parent(warm_start)
        given = {**parent_settings(parent), **given, "warm_start": str(parent.path)}
    else:
        given["algorithm"] = drafter
    if nproc is not None:  # refuse what cannot run before any rank starts (a preset sets no batch size)
        check_nproc(nproc)
        parallel.plan(batch_size, World(size=nproc))
    if relaunched(nproc):
        return
    with process_group(device) as world:
        with world.main_first():  # rank 0 imports the snapshot once; the others then load it
            model = load_target(target, device=rank_device(device))
        config = preset_config(preset, model, **given)
        if online_features:
            features = CacheConfig(layer_ids=comma_ints(layer_ids) or (), dtype=cache_dtype or CacheConfig.dtype)
            report = train(model, responses_dir_of(dataset, model.spec), config, out_dir=out, parallel=parallel,
                           online_features=features)
        else:
            cache = find_cache(model.spec, dataset, comma_ints(layer_ids), cache_dtype)
            report = train(model, cache, config, out_dir=out, parallel=parallel)
    if not world.is_main:
        return
    table = Table(title=cell(f"trained {report.algorithm} for {target}"), show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("checkpoint", cell(report.checkpoint))
    table.add_row("steps", str(report.steps))
    if warm_start is not None:
        table.add_row("grew from", cell(f"{warm_start} (now {report.cumulative_steps} steps over its whole line)"))
    for key in ("loss", "loss_ce", "loss_tv", "loss_conf", "expected_tau"):
        if key in report.final_metrics:
            table.add_row(key, f"{report.final_metrics[key]:.4f}")
    table.add_row("acceptance per position", " ".join("–" if a is None else f"{a:.2f}" for _, a in report.analytic_acceptance))
    console.print(table)
    console.print(f"decode with it: dspark generate --target {literal(target)} --drafter {literal(report.checkpoint)} "
                  f"--prompt ...", highlight=False)


#: the command's parameter names of TrainConfig / LossWeights fields whose names differ
_PARAMETERS = {"algorithm": "drafter", "anchors_per_sequence": "anchors", "warmup_steps": "warmup",
               "draft_vocab_size": "draft_vocab", "layer_ids": "draft_layers", "compile": "compile_step"}


def _given(ctx: typer.Context, settings: dict, loss: dict) -> dict:
    """The settings whose options were given on the command line (not left at their defaults)."""
    def given(name: str) -> bool:
        source = ctx.get_parameter_source(_PARAMETERS.get(name, name))
        return source is not None and source.name != "DEFAULT"  # (typer's own copy of click's enum: by name)

    chosen = {key: value for key, value in settings.items() if given(key)}
    chosen_loss = {key: value for key, value in loss.items() if given(key)}
    return {**chosen, "loss": chosen_loss} if chosen_loss else chosen
