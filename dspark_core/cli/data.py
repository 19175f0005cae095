"""`dspark data prompts|regenerate|cache`: the data preparation chain, step by step."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from dspark_core.data import layout
from dspark_core.data.feature_cache import CacheConfig, build_feature_cache, default_layer_ids
from dspark_core.data.prompts import read_prompt_file, write_prompts
from dspark_core.data.regenerate import RegenerationConfig, read_responses, recommended_sampling, regenerate_responses
from dspark_core.data.sources import PromptSource, collect_prompts
from dspark_core.decoding import SamplingConfig
from dspark_core.errors import DsparkError
from dspark_core.models import load_target

data_app = typer.Typer(no_args_is_help=True, help="Prepare training data: prompts -> target responses -> feature cache.")
console = Console()
_DATASET = typer.Option("default", "--dataset", help="Dataset name (a folder under $DSPARK_HOME/data).")


def _summary(title: str, rows: dict) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows.items():
        table.add_row(key, str(value))
    console.print(table)


@data_app.command("prompts")
def prompts_command(
    source: str = typer.Option(..., "--source", help="A .jsonl file, 'hf:NAME_OR_PATH' (datasets), or 'self' (Magpie)."),
    dataset: str = _DATASET,
    target: Optional[str] = typer.Option(None, "--target", help="For --source self: the model that writes the prompts."),
    count: int = typer.Option(64, "--count", help="For --source self: how many prompts."),
    hf_split: str = typer.Option("train", "--hf-split", help="For hf: the dataset split to read."),
    prompt_column: Optional[str] = typer.Option(None, "--prompt-column", help="For hf: a plain-text prompt column."),
    messages_column: Optional[str] = typer.Option(None, "--messages-column", help="For hf: a chat-messages column."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Keep at most this many prompts."),
    validation_fraction: float = typer.Option(0.05, "--validation-fraction", help="Share held out, by content hash."),
    on_error: str = typer.Option("skip", "--on-error", help="Malformed lines: 'skip' (reported) or 'raise'."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Collect prompts, deduplicate them, split train/validation deterministically, write prompts.jsonl."""
    records, report = collect_prompts(
        PromptSource(source=source, count=count, limit=limit, seed=seed, hf_split=hf_split,
                     prompt_column=prompt_column, messages_column=messages_column, on_error=on_error),
        target=(lambda: load_target(target)) if target else None,
    )
    path = layout.prompts_path(dataset)
    counts = write_prompts(records, path, validation_fraction)
    for problem in report.malformed[:20]:
        console.print(f"[yellow]skipped[/] {problem}", highlight=False, markup=False)
    if len(report.malformed) > 20:
        console.print(f"[yellow]... and {len(report.malformed) - 20} more malformed lines[/]")
    _summary("prompts", {"written to": path, "train": counts["train"], "validation": counts["validation"],
                         "source": source, "report": report.summary()})


@data_app.command("regenerate")
def regenerate_command(
    target: str = typer.Option(..., "--target", help="The target model that answers (self-distillation)."),
    dataset: str = _DATASET,
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    batch_size: int = typer.Option(8, "--batch-size"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Default: the model's recommended."),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    top_k: Optional[int] = typer.Option(None, "--top-k"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Answer only the first N prompts."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Have the target answer every prompt (resumable: a rerun continues where it stopped)."""
    source = layout.prompts_path(dataset)
    if not source.exists():
        raise DsparkError(f"dataset {dataset!r} has no prompts yet ({source}); run `dspark data prompts` first")
    model = load_target(target)
    sampling = recommended_sampling(model)
    if temperature is not None or top_p is not None or top_k is not None:
        sampling = SamplingConfig(
            temperature=sampling.temperature if temperature is None else temperature,
            top_p=sampling.top_p if top_p is None else top_p,
            top_k=sampling.top_k if top_k is None else top_k,
        )
    pairs = read_prompt_file(source)[:limit]
    out = layout.responses_dir(dataset, target)
    manifest = regenerate_responses(
        model, pairs, out, RegenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                              sampling=sampling)
    )
    _summary("responses", {"written to": out, "conversations": manifest["conversations"],
                           "splits": manifest["splits"], "response tokens": manifest["response_tokens"],
                           "sampling": manifest["settings"]["sampling"],
                           "skipped (too long)": len(manifest["skipped_too_long"])})


@data_app.command("cache")
def cache_command(
    target: str = typer.Option(..., "--target"),
    dataset: str = _DATASET,
    layer_ids: Optional[str] = typer.Option(None, "--layer-ids", help="Comma-separated decoder layers; default: 5 spread."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16, float16 or float32."),
    max_length: int = typer.Option(2048, "--max-length", help="Truncate conversations to this many tokens."),
) -> None:
    """Run the target over every conversation and store the chosen layers' outputs and the pre-LM-head state."""
    model = load_target(target)
    layers = tuple(int(x) for x in layer_ids.split(",")) if layer_ids else default_layer_ids(model.num_layers)
    responses = layout.responses_dir(dataset, target)
    manifest_in, conversations = read_responses(responses)
    out = layout.cache_dir(dataset, target, layers, dtype)
    manifest = build_feature_cache(
        model, conversations, out, CacheConfig(layer_ids=layers, dtype=dtype, max_length=max_length),
        source={"responses": str(responses), "target_revision": manifest_in["target_revision"]},
    )
    _summary("feature cache", {"written to": out, "samples": manifest["num_samples"], "tokens": manifest["num_tokens"],
                               "assistant tokens": manifest["assistant_tokens"], "layers": manifest["layer_ids"],
                               "size": f"{manifest['bytes'] / 2**20:.1f} MiB", "shards": len(manifest["shards"])})


