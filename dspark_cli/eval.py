"""`dspark eval`: speculative decoding with one or more drafters against autoregressive decoding, on evaluation
suites; prints the paper's Table 1 (τ per benchmark and domain, per drafter) and the conditional acceptance
by position, and records everything in the metrics database (DuckDB) and MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from dspark_cli.options import core_option, report_table, transposed
from dspark_cli.output import literal
from dspark_core.data import layout
from dspark_core.data.sources import PromptsConfig
from dspark_core.drafters.checkpoint import read_draft_config
from dspark_core.drafters.factory import DRAFTER_FORMS, build_drafter
from dspark_core.errors import DsparkError
from dspark_core.models import load_target
from dspark_core.models.spec import slugify
from dspark_core.paths import dspark_home, write_json_atomic
from dspark_core.provenance import command_line, provenance
from dspark_core.recipes.evaluation import EvalConfig
from dspark_core.recipes.suite_evaluation import SuiteReport, evaluate_suite, resolve_suites
from dspark_core.settings import default_of, help_of
from dspark_core.store import open_metrics_store
from dspark_core.store.acceptance import now_utc

console = Console(width=max(Console().width, 140))  # the tables need the room, even when piped


def _drafters(values: list[str], target) -> dict:
    """`[LABEL=]DRAFTER` values -> {label: drafter}; a trained draft's directory stays a path (its algorithm and
    weights are recorded with the metrics)."""
    drafters = {}
    for value in values:
        label, _, spec = value.partition("=") if "=" in value and not Path(value).expanduser().exists() else ("", "", value)
        spec = spec.strip()
        path = Path(spec).expanduser()
        drafter = path if path.is_dir() else build_drafter(spec, target)
        if drafter is None:
            raise DsparkError(f"--drafter {value!r}: evaluation needs a drafter ({DRAFTER_FORMS}, not none)")
        if not label.strip():  # a trained draft is labelled by its algorithm, else by the drafter's name
            label = read_draft_config(path)["algorithm"] if path.is_dir() else spec
            label = f"{label}:{path.name}" if label in drafters else label
        label = label.strip()
        if label in drafters:
            raise DsparkError(f"two drafters are labelled {label!r}; name them apart with LABEL=DRAFTER")
        drafters[label] = drafter
    return drafters


def _log_mlflow(report: SuiteReport, tracking_uri: str | None, table_file: Path) -> dict[str, str]:
    """One MLflow run per drafter: settings, Table-1 metrics and the result file. Returns {label: run id}."""
    from dataclasses import asdict

    from pipelines.tracking import Tracking

    tracking = Tracking(tracking_uri)
    run_ids = {}
    for label in report.labels:
        first = next(iter(report.reports[label].values()))
        with tracking.run(f"eval {label} · {report.target_spec}", {"dspark.stage": "eval", "dspark.drafter": label}) as run_id:
            tracking.log_params(run_id, {**asdict(report.config), "target": report.target_spec, "drafter": label,
                                         "draft_path": str(first.draft_path or first.drafter),
                                         "suites": ",".join(b.name for b in report.benchmarks)})
            tracking.log_metrics(run_id, report.metrics(label))
            tracking.log_artifacts(run_id, table_file)
        run_ids[label] = run_id
    return run_ids


def eval_command(
    target: str = typer.Option(..., "--target", help="The target model the drafts serve."),
    drafter: list[str] = typer.Option(..., "--drafter", help=f"[LABEL=]DRAFTER, repeatable: {DRAFTER_FORMS}."),
    suite: list[str] = typer.Option(list(default_of(EvalConfig, "suites")), "--suite",
                                    help=help_of(EvalConfig, "suites") + ". Repeatable."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=(
        f"The drafts' training dataset: suites are checked against its prompts (none may have been trained on) "
        f"[default: {default_of(PromptsConfig, 'dataset')}, when it exists]")),
    max_prompts: int = core_option(EvalConfig, "max_prompts", "--max-prompts"),
    max_new_tokens: int = core_option(EvalConfig, "max_new_tokens", "--max-new-tokens"),
    temperature: float = core_option(EvalConfig, "temperature", "--temperature"),
    seed: int = core_option(EvalConfig, "seed", "--seed"),
    block_size: Optional[int] = core_option(EvalConfig, "block_size", "--block-size"),
    schedule: str = core_option(EvalConfig, "schedule", "--schedule"),
    threshold: float = core_option(EvalConfig, "threshold", "--threshold"),
    record: bool = typer.Option(True, "--record/--no-record", help="Write the measurement to DuckDB and MLflow."),
    database: Optional[Path] = typer.Option(None, "--db", help="Metrics store: a DuckDB file, or a measurement-log directory (default: $DSPARK_METRICS, else $DSPARK_HOME/metrics.duckdb)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: the "
                                                                              "SQLite store under $DSPARK_HOME)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the tables as JSON here."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: auto)."),
) -> None:
    """Decode each suite's prompts one request at a time autoregressively and with every DRAFTER; print Table 1."""
    config = EvalConfig(suites=tuple(suite), max_prompts=max_prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                        block_size=block_size, schedule=schedule, threshold=threshold)
    prompts_file = layout.prompts_path(dataset or default_of(PromptsConfig, "dataset"))
    if dataset and not prompts_file.exists():
        raise DsparkError(f"dataset {dataset!r} has no prompts ({prompts_file}); run `dspark data prompts` first, or "
                          f"leave out --dataset")
    benchmarks = resolve_suites(config.suites, prompts_file)
    model = load_target(target, device=device)
    report = evaluate_suite(model, _drafters(drafter, model), benchmarks, config, progress=True)
    mode = "greedy" if temperature == 0 else f"T={temperature}"
    prompts = sum(len(b.records) for b in report.benchmarks)
    # Table 1 turned on its side (one line per benchmark and domain, one column per drafter) fits a terminal.
    console.print(report_table(f"τ on {model.spec}, {mode}, {prompts} prompts, {max_new_tokens} new tokens",
                               *transposed(*report.table())))
    console.print(report_table("conditional acceptance by block position (whole suite)", *report.position_table()))
    for label in report.labels:
        if report.greedy_identical(label) is not None:
            console.print(f"greedy output identical to autoregressive ({literal(label)}): "
                          f"[bold]{report.greedy_identical(label)}[/]")
    result_file = out or dspark_home() / "reports" / f"eval-{slugify(model.spec)}-{now_utc():%Y%m%dT%H%M%S}.json"
    result_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result_file, {"command": command_line(), **provenance(), **report.to_json()})
    console.print(f"tables written to {literal(str(result_file))}")
    if record:
        run_ids = _log_mlflow(report, tracking_uri, result_file)
        store = open_metrics_store(database)
        written = store.record(report.acceptance_rows(base_model=slugify(model.spec), recorded_at=now_utc(),
                                                      mlflow_run_ids=run_ids))
        console.print(f"recorded {written} rows in {literal(str(store.path))} and {len(run_ids)} MLflow runs")

