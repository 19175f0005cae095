"""`dspark context-sweep`: τ and speed-up of a draft by context length, up to the target's longest context."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from dspark_cli.options import comma_ints, core_option, report_table
from dspark_cli.output import literal
from dspark_core.data import layout
from dspark_core.data.regenerate import read_responses
from dspark_core.data.sources import PromptsConfig
from dspark_core.drafters.factory import DRAFTER_FORMS, build_drafter
from dspark_core.errors import DsparkError
from dspark_core.models import load_target
from dspark_core.models.spec import slugify
from dspark_core.paths import dspark_home, write_json_atomic
from dspark_core.provenance import command_line, provenance
from dspark_core.recipes.context_sweep import SweepConfig, context_sweep
from dspark_core.recipes.suite_evaluation import resolve_suites
from dspark_core.settings import default_of, help_of
from dspark_core.store import open_metrics_store
from dspark_core.store.acceptance import now_utc

console = Console(width=max(Console().width, 140))  # the tables need the room, even when piped


def sweep_command(
    target: str = typer.Option(..., "--target", help="The target model the draft serves."),
    drafter: str = typer.Option(..., "--drafter", help=f"The drafter: {DRAFTER_FORMS}."),
    lengths: Optional[str] = typer.Option(",".join(map(str, default_of(SweepConfig, "lengths"))), "--lengths",
                                          help=help_of(SweepConfig, "lengths") + " (comma-separated)."),
    suite: str = typer.Option("heldout-v1", "--suite", help="Where the final questions come from (see `dspark eval`)."),
    dataset: str = typer.Option(default_of(PromptsConfig, "dataset"), "--dataset", help=(
        "The dataset whose regenerated conversations fill the context (context 'turns'); the questions are checked "
        "against its prompts")),
    context: str = core_option(SweepConfig, "context", "--context"),
    documents: str = core_option(SweepConfig, "documents", "--documents"),
    prompts_per_length: int = core_option(SweepConfig, "prompts_per_length", "--prompts-per-length"),
    max_new_tokens: int = core_option(SweepConfig, "max_new_tokens", "--max-new-tokens"),
    temperature: float = core_option(SweepConfig, "temperature", "--temperature"),
    block_size: Optional[int] = core_option(SweepConfig, "block_size", "--block-size"),
    seed: int = core_option(SweepConfig, "seed", "--seed"),
    record: bool = typer.Option(True, "--record/--no-record", help="Write the rows to the metrics database."),
    out: Optional[Path] = typer.Option(None, "--out", help="Result JSON (default under $DSPARK_HOME/reports); the "
                                                           "plot is written beside it."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: auto)."),
) -> None:
    """Build prompts of each LENGTH (earlier turns or a document before a suite question) and decode them
    autoregressively and with DRAFTER; print τ and speed-up per length and plot them."""
    config = SweepConfig(lengths=comma_ints(lengths) or (), prompts_per_length=prompts_per_length,
                         max_new_tokens=max_new_tokens, temperature=temperature, block_size=block_size,
                         context=context, documents=documents, seed=seed)
    questions = resolve_suites([suite], layout.prompts_path(dataset))[0]
    model = load_target(target, device=device)
    conversations = None
    if config.context == "turns":
        responses = layout.responses_dir(dataset, model.spec)
        if not responses.exists():
            raise DsparkError(f"dataset {dataset!r} has no regenerated conversations for {model.spec!r} ({responses}); "
                              f"run `dspark data regenerate`, or use --context documents")
        conversations = [[(m["role"], m["content"]) for m in c["messages"]] for c in read_responses(responses)[1]]
    path = Path(drafter).expanduser()
    report = context_sweep(model, path if path.is_dir() else build_drafter(drafter, model), questions, config,
                           conversations=conversations, progress=True)
    trained = f", draft trained on ≤ {report.trained_length} tokens" if report.trained_length else ""
    console.print(report_table(f"{report.drafter} on {model.spec} by context length ({config.context}){trained}",
                               *report.table()))
    result = out or dspark_home() / "reports" / f"context-sweep-{slugify(model.spec)}-{now_utc():%Y%m%dT%H%M%S}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, {"command": command_line(), **provenance(), **report.to_json()})
    plot = report.plot(result.with_suffix(".png"))
    console.print(f"results {literal(str(result))}, plot {literal(str(plot))}")
    if record:
        written = open_metrics_store().record(
            report.acceptance_rows(base_model=slugify(model.spec), recorded_at=now_utc()))
        console.print(f"recorded {written} rows (context_bucket ctx-<length>) in the metrics database")
