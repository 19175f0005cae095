"""`dspark transfer`: trained drafts evaluated unchanged on other base models — the transfer matrix, τ retention
on derived models, and DSpark's gain over DFlash and Eagle3 per model family."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from dspark_cli.options import core_option, report_table
from dspark_cli.output import literal
from dspark_core.models import load_target
from dspark_core.models.derive import parent_slugs
from dspark_core.models.registry import request_retraining
from dspark_core.models.spec import parse_spec, slugify
from dspark_core.paths import dspark_home, write_json_atomic
from dspark_core.provenance import command_line, provenance
from dspark_core.recipes.suite_evaluation import resolve_suites
from dspark_core.recipes.transfer import TrainedDraft, TransferConfig, transfer_report
from dspark_core.settings import default_of, help_of
from dspark_core.store import open_metrics_store
from dspark_core.store.acceptance import now_utc

console = Console(width=max(Console().width, 140))  # the tables need the room, even when piped


def transfer_command(
    drafter: list[str] = typer.Option(..., "--drafter", help="A trained draft (checkpoint or export directory); "
                                                             "repeatable. Its own base model is always evaluated."),
    target: list[str] = typer.Option([], "--target", help="Another base model to evaluate the drafts on; repeatable."),
    suite: list[str] = typer.Option(list(default_of(TransferConfig, "suites")), "--suite",
                                    help=help_of(TransferConfig, "suites") + ". Repeatable."),
    max_prompts: int = core_option(TransferConfig, "max_prompts", "--max-prompts"),
    max_new_tokens: int = core_option(TransferConfig, "max_new_tokens", "--max-new-tokens"),
    temperature: float = core_option(TransferConfig, "temperature", "--temperature"),
    block_size: Optional[int] = core_option(TransferConfig, "block_size", "--block-size"),
    seed: int = core_option(TransferConfig, "seed", "--seed"),
    threshold: float = core_option(TransferConfig, "retention_threshold", "--retention-threshold"),
    request: bool = typer.Option(False, "--request-retraining", help="Register each derived model under the "
                                 "threshold for retraining (the Dagster sensor for new base models starts it)."),
    record: bool = typer.Option(True, "--record/--no-record", help="Write the cells to DuckDB and one MLflow run."),
    out: Optional[Path] = typer.Option(None, "--out", help="Result JSON (default: $DSPARK_HOME/reports/transfer-*.json); "
                                                           "the heat map is written beside it."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: auto)."),
) -> None:
    """Evaluate every DRAFTER on its own base model and on every TARGET its shapes fit; print the matrix."""
    config = TransferConfig(suites=tuple(suite), max_prompts=max_prompts, max_new_tokens=max_new_tokens,
                            temperature=temperature, block_size=block_size, seed=seed, retention_threshold=threshold)
    for spec in target:
        parse_spec(spec)  # a mistyped --target is an error now, not an empty column after the decoding
    drafts = [TrainedDraft.from_path(Path(path).expanduser()) for path in drafter]
    specs = {d.trained_on: d.target_spec for d in drafts}
    specs.update({slugify(spec): spec for spec in target})
    lineage = parent_slugs(specs)
    loaders = {slug: (lambda spec=spec: load_target(spec, device=device)) for slug, spec in specs.items()}
    report = transfer_report(drafts, loaders, lineage, resolve_suites(config.suites, None), config, progress=True)

    console.print(report_table("transfer matrix: mean τ (rows: trained on, columns: evaluated on)", *report.matrix()))
    if report.retentions():
        console.print(report_table(f"τ retention on derived models (threshold {threshold:.0%})", *report.retention_table()))
    if report.family_table()[1]:
        console.print(report_table("each base model's own drafts: DSpark's relative gain", *report.family_table()))
    result = out or dspark_home() / "reports" / f"transfer-{now_utc():%Y%m%dT%H%M%S}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, {"command": command_line(), **provenance(), **report.to_json()})
    plot = report.heat_map(result.with_suffix(".png"))
    console.print(f"results {literal(str(result))}, heat map {literal(str(plot))}")
    for slug, reason in report.retraining_needed().items():
        if request:
            request_retraining(specs[slug], reason)
        console.print(f"[yellow]{literal(slug)} needs drafts of its own[/]: {literal(reason)}"
                      + ("; retraining requested" if request else "; --request-retraining asks the platform for it"))
    if record:
        from pipelines.tracking import Tracking

        tracking = Tracking()
        with tracking.run("transfer", {"dspark.stage": "transfer"}) as run_id:
            tracking.log_params(run_id, {"suites": ",".join(config.suites), "max_prompts": max_prompts,
                                         "max_new_tokens": max_new_tokens, "temperature": temperature,
                                         "drafts": len(drafts), "base_models": ",".join(specs)})
            tracking.log_metrics(run_id, report.metrics())
            tracking.log_artifacts(run_id, plot)
            tracking.log_artifacts(run_id, result)
        written = open_metrics_store().record(
            report.acceptance_rows(recorded_at=now_utc(), mlflow_run_id=run_id))
        console.print(f"recorded {written} rows in DuckDB and MLflow run {run_id}")
