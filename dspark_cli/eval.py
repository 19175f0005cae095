"""`dspark eval`: speculative decoding with a trained draft against autoregressive decoding, on a dataset's
held-out prompts; prints the table and records the measurement in the metrics database (DuckDB)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from dspark_cli.options import core_option, report_table
from dspark_core.data import layout
from dspark_core.data.sources import PromptsConfig
from dspark_core.errors import DsparkError
from dspark_core.models import load_target
from dspark_core.models.spec import slugify
from dspark_core.paths import dspark_home
from dspark_core.recipes.evaluation import EvalConfig, evaluate, held_out_prompts
from dspark_core.store import MetricsStore
from dspark_core.store.acceptance import now_utc

console = Console()


def eval_command(
    target: str = typer.Option(..., "--target", help="The target model the draft serves."),
    drafter: Path = typer.Option(..., "--drafter", help="A trained draft: checkpoint or export directory."),
    dataset: str = core_option(PromptsConfig, "dataset", "--dataset"),
    benchmark: str = core_option(EvalConfig, "benchmark", "--benchmark"),
    max_prompts: int = core_option(EvalConfig, "max_prompts", "--max-prompts"),
    max_new_tokens: int = core_option(EvalConfig, "max_new_tokens", "--max-new-tokens"),
    temperature: float = core_option(EvalConfig, "temperature", "--temperature"),
    seed: int = core_option(EvalConfig, "seed", "--seed"),
    block_size: Optional[int] = core_option(EvalConfig, "block_size", "--block-size"),
    schedule: str = core_option(EvalConfig, "schedule", "--schedule"),
    threshold: float = core_option(EvalConfig, "threshold", "--threshold"),
    record: bool = typer.Option(True, "--record/--no-record", help="Write the measurement to the metrics database."),
    database: Optional[Path] = typer.Option(None, "--db", help="DuckDB file (default: $DSPARK_HOME/metrics.duckdb)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: auto)."),
) -> None:
    """Decode the dataset's held-out prompts one request at a time with DRAFTER and autoregressively."""
    config = EvalConfig(benchmark=benchmark, max_prompts=max_prompts, max_new_tokens=max_new_tokens,
                        temperature=temperature, seed=seed, block_size=block_size, schedule=schedule,
                        threshold=threshold)
    model = load_target(target, device=device)
    prompts_file = layout.prompts_path(dataset)
    if not prompts_file.exists():
        raise DsparkError(f"dataset {dataset!r} has no prompts ({prompts_file}); run `dspark data prompts` first")
    report = evaluate(model, drafter, held_out_prompts(model, prompts_file, config.max_prompts), config, progress=True)
    columns, rows = report.table()
    console.print(report_table(f"{report.drafter} on {model.spec}: {len(report.prompts)} held-out prompts, "
                               f"{'greedy' if config.temperature == 0 else f'T={config.temperature}'}", columns, rows))
    if report.greedy_identical is not None:
        console.print(f"greedy output identical to autoregressive: [bold]{report.greedy_identical}[/]")
    if record:
        store = MetricsStore(database or dspark_home() / "metrics.duckdb")
        rows = report.acceptance_rows(base_model=slugify(model.spec), recorded_at=now_utc())
        written = store.record(rows)
        console.print(f"recorded {written} rows in {escape(str(store.path))}")
