"""`dspark data prompts|regenerate|cache`: the data preparation chain, step by step (the library's recipes)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dspark_cli.options import comma_ints, comma_words, core_option
from dspark_cli.output import literal
from dspark_cli.ranks import nproc_option, relaunched
from dspark_core.data.feature_cache import CacheConfig
from dspark_core.data.regenerate import RegenerationConfig
from dspark_core.data.sources import PromptsConfig
from dspark_core.device import DATA_DTYPE_HELP
from dspark_core.distributed import process_group, rank_device
from dspark_core.errors import DsparkError
from dspark_core.models import load_target
from dspark_core.models.target import load_target_without_weights
from dspark_core.recipes.features import build_cache, estimate_cache
from dspark_core.recipes.prompts import prepare_prompts
from dspark_core.recipes.responses import generate_responses
from dspark_core.settings import help_of


def _data_target(spec: str, dtype: str):
    return load_target(spec, dtype=dtype, for_data=True)


data_app = typer.Typer(no_args_is_help=True, help="Prepare training data: prompts -> target responses -> feature cache.")
console = Console()


def _summary(title: str, rows: dict) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows.items():
        table.add_row(key, literal(str(value)))
    console.print(table)


@data_app.command("prompts")
def prompts_command(
    source: Optional[str] = core_option(PromptsConfig, "source", "--source"),
    dataset: str = core_option(PromptsConfig, "dataset", "--dataset"),
    target: Optional[str] = typer.Option(None, "--target", help="For --source self: the model that writes the prompts."),
    count: int = core_option(PromptsConfig, "count", "--count"),
    domains: Optional[str] = typer.Option(None, "--domains", help=help_of(PromptsConfig, "domains") + "; comma-separated."),
    hf_split: str = core_option(PromptsConfig, "hf_split", "--hf-split"),
    prompt_column: Optional[str] = core_option(PromptsConfig, "prompt_column", "--prompt-column"),
    messages_column: Optional[str] = core_option(PromptsConfig, "messages_column", "--messages-column"),
    limit: Optional[int] = core_option(PromptsConfig, "limit", "--limit"),
    validation_fraction: float = core_option(PromptsConfig, "validation_fraction", "--validation-fraction"),
    on_error: str = core_option(PromptsConfig, "on_error", "--on-error"),
    seed: int = core_option(PromptsConfig, "seed", "--seed"),
    target_dtype: str = typer.Option("auto", "--target-dtype", help=DATA_DTYPE_HELP),
) -> None:
    """Collect prompts, deduplicate them, split train/validation deterministically, write prompts.jsonl
    (reused while the source and settings are unchanged)."""
    config = PromptsConfig(dataset=dataset, source=source, count=count, domains=comma_words(domains), limit=limit,
                           seed=seed, hf_split=hf_split,
                           prompt_column=prompt_column, messages_column=messages_column, on_error=on_error,
                           validation_fraction=validation_fraction)
    report = prepare_prompts(config, target=(lambda: _data_target(target, target_dtype)) if target else None)
    for problem in report.malformed[:20]:
        console.print(f"[yellow]skipped[/] {literal(problem)}", highlight=False)
    if len(report.malformed) > 20:
        console.print(f"[yellow]... and {len(report.malformed) - 20} more malformed lines[/]")
    _summary("prompts", {"written to": report.path, "train": report.counts["train"],
                         "validation": report.counts["validation"], "source": report.source, "report": report.summary})


@data_app.command("regenerate")
def regenerate_command(
    target: str = typer.Option(..., "--target", help="The target model that answers (self-distillation)."),
    dataset: str = core_option(PromptsConfig, "dataset", "--dataset"),
    max_new_tokens: int = core_option(RegenerationConfig, "max_new_tokens", "--max-new-tokens"),
    batch_size: int = core_option(RegenerationConfig, "batch_size", "--batch-size"),
    temperature: Optional[float] = core_option(RegenerationConfig, "temperature", "--temperature"),
    top_p: Optional[float] = core_option(RegenerationConfig, "top_p", "--top-p"),
    top_k: Optional[int] = core_option(RegenerationConfig, "top_k", "--top-k"),
    limit: Optional[int] = core_option(RegenerationConfig, "limit", "--limit"),
    seed: int = core_option(RegenerationConfig, "seed", "--seed"),
    target_dtype: str = typer.Option("auto", "--target-dtype", help=DATA_DTYPE_HELP),
    server: Optional[str] = core_option(RegenerationConfig, "server", "--server"),
    server_model: Optional[str] = core_option(RegenerationConfig, "server_model", "--server-model"),
    concurrency: int = core_option(RegenerationConfig, "concurrency", "--concurrency"),
    server_timeout: float = core_option(RegenerationConfig, "server_timeout", "--server-timeout"),
    server_retry_seconds: float = core_option(RegenerationConfig, "server_retry_seconds", "--server-retry-seconds"),
    nproc: Optional[int] = nproc_option(),
) -> None:
    """Have the target answer every prompt (resumable: a rerun continues where it stopped). With several ranks
    (--nproc, or under torchrun) each rank answers its share of the batches; with --server an OpenAI-compatible
    server (vLLM, SGLang) answers, checked first to serve the target."""
    if server and nproc is not None:
        raise DsparkError("--nproc splits regeneration here among ranks, but with --server the server answers: drop "
                          "--nproc and raise --concurrency instead")
    if relaunched(nproc):
        return
    config = RegenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, temperature=temperature,
                                top_p=top_p, top_k=top_k, limit=limit, server=server, server_model=server_model,
                                concurrency=concurrency, server_timeout=server_timeout,
                                server_retry_seconds=server_retry_seconds)
    with process_group() as world:
        with world.main_first():  # rank 0 imports the snapshot (once) before the other ranks read it
            model = (load_target_without_weights(target) if server  # the server runs the model; its tokenizer is enough here
                     else load_target(target, dtype=target_dtype, for_data=True, device=rank_device(None)))
        report = generate_responses(model, dataset, config, world=world)
    if world.is_main:
        rows = {"written to": report.path, "conversations": report.conversations, "splits": report.splits,
                "response tokens": report.response_tokens, "sampling": report.sampling,
                "skipped (too long)": len(report.skipped_too_long)}
        if report.server:
            rows["answered by"] = f"{report.server['model']} at {report.server['url']}"
        _summary("responses", rows)


@data_app.command("cache")
def cache_command(
    target: str = typer.Option(..., "--target"),
    dataset: str = core_option(PromptsConfig, "dataset", "--dataset"),
    layer_ids: Optional[str] = typer.Option(None, "--layer-ids", help="Comma-separated decoder layers; default: "
                                            "--num-layers spread over the depth."),
    num_layers: int = core_option(CacheConfig, "num_layers", "--num-layers"),
    dtype: str = core_option(CacheConfig, "dtype", "--dtype"),
    max_length: int = core_option(CacheConfig, "max_length", "--max-length"),
    target_dtype: str = typer.Option("auto", "--target-dtype", help=DATA_DTYPE_HELP),
    shard_tokens: int = typer.Option(CacheConfig.shard_tokens, "--shard-tokens", min=1,
                                     help="Tokens per shard file (the unit of writing, resuming and of the work "
                                          "split between ranks)."),
    nproc: Optional[int] = nproc_option(),
    estimate: bool = typer.Option(False, "--estimate", help="Only say how large the cache would be and whether the "
                                  "disk holds it (else: train with --online-features); builds nothing."),
    force: bool = typer.Option(False, "--force", help="Build every shard anew (the finished cache stays readable "
                               "until the new one is complete). Without it a finished cache is verified and only "
                               "missing or damaged shards are built again."),
) -> None:
    """Run the target over every conversation and store the chosen layers' outputs and the pre-LM-head state.
    A finished cache is reused after verifying its shards; missing or damaged ones are rebuilt; a dataset that
    grew computes only its new conversations. With several ranks (--nproc, or under torchrun) each rank computes
    its share of the shards."""
    config = CacheConfig(layer_ids=comma_ints(layer_ids) or (), num_layers=num_layers, dtype=dtype,
                         max_length=max_length, shard_tokens=shard_tokens)
    if estimate:
        found = estimate_cache(load_target_without_weights(target), dataset, config)
        _summary("feature cache estimate", {
            "would be written to": found.path, "samples": found.samples, "tokens": found.tokens,
            "per token": f"{found.bytes_per_token / 1024:.1f} KiB", "size": f"{found.bytes_needed / 2**30:.2f} GiB",
            "free there": f"{found.bytes_free / 2**30:.2f} GiB", "mode that fits": found.mode})
        return
    if relaunched(nproc):
        return
    with process_group() as world:
        with world.main_first():  # rank 0 imports the snapshot (once) before the other ranks read it
            model = load_target(target, dtype=target_dtype, for_data=True, device=rank_device(None))
        report = build_cache(model, dataset, config, world=world, force=force)
    if world.is_main:
        _summary("feature cache", {"written to": report.path, "samples": report.samples, "tokens": report.tokens,
                                   "assistant tokens": report.assistant_tokens, "layers": report.layer_ids,
                                   "size": f"{report.size_mib} MiB", "shards": report.shards,
                                   "reused": report.reused, "shards built again (damaged, missing or left by an "
                                   "interrupted build)": report.rebuilt_shards,
                                   "samples copied from its earlier version": report.copied_samples})

