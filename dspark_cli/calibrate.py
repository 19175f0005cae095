"""`dspark calibrate`: fit a draft's confidence temperatures (sequential temperature scaling) and write the
calibrated draft; prints ECE / AUROC / Brier per position before and after, records them in DuckDB."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from dspark_cli.options import core_option, report_table
from dspark_cli.output import literal
from dspark_core.evaluation.speculative import eval_prompts
from dspark_core.evaluation.suites import suite_records
from dspark_core.models import load_target
from dspark_core.models.spec import slugify
from dspark_core.paths import write_json_atomic
from dspark_core.recipes.calibration import CalibrationConfig, calibrate
from dspark_core.store import open_metrics_store
from dspark_core.store.acceptance import now_utc

console = Console()


def calibrate_command(
    target: str = typer.Option(..., "--target", help="The target model the draft serves."),
    drafter: Path = typer.Option(..., "--drafter", help="A trained draft with a confidence head (DSpark)."),
    suite: str = core_option(CalibrationConfig, "suite", "--suite"),
    max_prompts: int = core_option(CalibrationConfig, "max_prompts", "--max-prompts"),
    max_new_tokens: int = core_option(CalibrationConfig, "max_new_tokens", "--max-new-tokens"),
    test_fraction: float = core_option(CalibrationConfig, "test_fraction", "--test-fraction"),
    temperature: float = core_option(CalibrationConfig, "temperature", "--temperature"),
    method: str = core_option(CalibrationConfig, "method", "--method"),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the calibrated draft (default: "
                                       "calibrated/ beside the draft)."),
    report_file: Optional[Path] = typer.Option(None, "--report", help="Also write the whole report as JSON here."),
    record: bool = typer.Option(True, "--record/--no-record", help="Write ECE/AUROC/Brier to the metrics database."),
    database: Optional[Path] = typer.Option(None, "--db", help="Metrics store: a DuckDB file, or a measurement-log directory (default: $DSPARK_METRICS, else $DSPARK_HOME/metrics.duckdb)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: auto)."),
) -> None:
    """Decode suite prompts with DRAFTER verifying its whole block, fit one confidence temperature per draft
    position on part of them and report the calibration on the rest."""
    config = CalibrationConfig(suite=suite, max_prompts=max_prompts, max_new_tokens=max_new_tokens,
                               test_fraction=test_fraction, temperature=temperature, method=method)
    model = load_target(target, device=device)
    prompts = eval_prompts(model, suite_records(config.suite), config.max_prompts)
    report = calibrate(model, drafter, prompts, config, out=out, progress=True)
    if report.skipped:
        console.print(literal(report.skipped))
        return
    columns, rows = report.table()
    console.print(report_table(f"{report.algorithm} confidence calibration: fit on {report.fit_prompts} prompts, "
                               f"reported on {report.test_prompts} ({report.rounds} rounds)", columns, rows, digits=3))
    plot = report.plot(report.calibrated_path.parent / "calibration-reliability.png")
    console.print(f"calibrated draft: {literal(str(report.calibrated_path))}\nreliability diagrams: {literal(str(plot))}")
    if report_file:
        write_json_atomic(report_file, {**report.to_dict(), "target": model.spec, "recorded_at": now_utc().isoformat()})
        console.print(f"report: {literal(str(report_file))}")
    if record:
        store = open_metrics_store(database)
        written = store.record(report.acceptance_rows(base_model=slugify(model.spec), recorded_at=now_utc()))
        console.print(f"recorded {written} rows in {literal(str(store.path))}")
