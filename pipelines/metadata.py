"""What the thin assets share: reading an upstream materialization's metadata (artefacts travel as paths
under $DSPARK_HOME, not through an IO manager), MLflow tags, and the UI's view of the library's reports."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import dagster as dg

from dspark_core.recipes.calibration import CalibrationReport
from dspark_core.recipes.suite_evaluation import SuiteReport
from dspark_core.recipes.transfer import TransferReport
from dspark_core.recipes.training import TrainReport


def upstream(context, asset: str, partition_key: str | None) -> dict[str, Any]:
    """The latest materialization metadata of `asset` for `partition_key` (None: an unpartitioned asset), as
    plain values."""
    found = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                              asset_partitions=[partition_key] if partition_key is not None else None), limit=1)
    if not found.records:
        raise dg.Failure(f"{asset} has no materialization for partition {partition_key!r}; materialize it first")
    metadata = found.records[0].asset_materialization.metadata
    return {key: value.value for key, value in metadata.items()}


def upstream_path(context, asset: str, partition_key: str, key: str = "path") -> Path:
    path = Path(upstream(context, asset, partition_key)[key])
    if not path.exists():
        raise dg.Failure(f"{asset} for {partition_key!r} points at {path}, which no longer exists; re-materialize {asset}")
    return path


def run_tags(context, asset: str) -> dict[str, str]:
    """MLflow tags linking a run back to Dagster."""
    return {"dagster.run_id": context.run.run_id, "dagster.asset": asset,
            "dagster.partition": str(context.partition_key) if context.has_partition_key else ""}


def training_progress(context, steps: int):
    """An `on_log` callback for the trainer that writes a line to the run log every 50 steps."""
    def log(step: int, metrics: dict) -> None:
        if step % 50 == 0 or step == steps:
            context.log.info(f"step {step}/{steps}: loss {metrics['loss']:.4f}, expected τ {metrics['expected_tau']:.2f}")

    return log


def image(path: Path, alt: str) -> dg.MetadataValue:
    """A PNG shown inline in the UI (markdown with an embedded data URI)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def markdown_table(columns: list[str], rows: list[list]) -> dg.MetadataValue:
    def cell(value) -> str:
        if value is None:
            return "–"
        return f"{value:.3f}" if isinstance(value, float) else str(value).replace("|", "/").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def mlflow_link(tracking, run_id: str) -> dict[str, Any]:
    return {"mlflow_run_id": run_id, "mlflow_run": dg.MetadataValue.url(tracking.run_url(run_id) or tracking.uri)}


def training_metadata(report: TrainReport) -> dict[str, Any]:
    final = report.final_metrics
    return {
        "path": dg.MetadataValue.path(str(report.checkpoint)),
        "algorithm": report.algorithm,
        "steps": report.steps,
        "final_loss": final.get("loss"),
        "expected_tau": final.get("expected_tau"),
        "held_out_tau": final.get("val_tau"),
        "positions_per_s": final.get("positions_per_s"),
        "stored_parameters": report.stored_parameters,
        "analytic_acceptance": markdown_table(["position k", "acceptance (training batch)"],
                                              [list(row) for row in report.analytic_acceptance]),
        "loss_curve": image(report.loss_curve, "loss curve"),
    }


def lineage_metadata(report: TrainReport, parent_version: str | None) -> dict[str, Any]:
    """Where a draft came from: the registered version it continued from (or none), its generation, and what
    its whole line has trained."""
    parent = report.parent or {}
    return {"parent_version": parent_version or "none", "parent_path": parent.get("path", "none"),
            "generation": report.generation, "cumulative_steps": report.cumulative_steps,
            "cumulative_tokens": report.cumulative_tokens}


def suite_evaluation_metadata(report: SuiteReport, drafter: str, plot: Path) -> dict[str, Any]:
    """What the UI shows of one drafter's suite evaluation; `tau` is the macro mean the champion rule compares."""
    overall = report.overall(drafter)
    identical = report.greedy_identical(drafter)
    by_domain = [[s.domain, s.context_bucket, benchmark, s.prompts, s.tau, s.speedup, s.draft_ms_per_round,
                  s.verify_ms_per_round, " ".join("–" if r is None else f"{r:.2f}" for r, _ in s.cond_accept)]
                 for benchmark, one in report.reports[drafter].items() for s in one.summaries[1:]]
    return {
        "tau": round(report.mean_tau(drafter), 4),
        "tau_all_prompts": round(overall.tau, 4),
        "speedup": round(overall.speedup, 3),
        "tokens_per_s": round(overall.tokens_per_s, 2),
        "draft_ms_per_round": round(overall.draft_ms_per_round, 2),
        "verify_ms_per_round": round(overall.verify_ms_per_round, 2),
        "greedy_identical": "n/a (sampled)" if identical is None else identical,
        "prompts": sum(len(b.records) for b in report.benchmarks),
        "suites": ", ".join(b.name for b in report.benchmarks),
        "eval_id": report.eval_id,
        "results": markdown_table(*report.table()),
        "by_domain_and_context": markdown_table(
            ["domain", "context", "benchmark", "prompts", "τ", "speed-up", "draft ms", "verify ms", "cond. accept @k"],
            by_domain),
        "acceptance_curve": image(plot, "acceptance by position"),
    }


def transfer_metadata(report: TransferReport, plot: Path, requested: dict[str, str]) -> dict[str, Any]:
    return {
        "transfer_matrix": markdown_table(*report.matrix()),
        "heat_map": image(plot, "transfer matrix"),
        "retention": markdown_table(*report.retention_table()),
        "families": markdown_table(*report.family_table()),
        "retraining_requested": dg.MetadataValue.json(requested),
        "retention_threshold": report.config.retention_threshold,
        "drafts": len(report.drafts),
    }


def calibration_metadata(report: CalibrationReport, plot: Path) -> dict[str, Any]:
    columns, rows = report.table()
    return {
        "path": dg.MetadataValue.path(str(report.calibrated_path)),
        "temperatures": dg.MetadataValue.json({f"T{k}": round(t, 4) for k, t in enumerate(report.temperatures, 1)}),
        "shifts": dg.MetadataValue.json({f"b{k}": round(b, 4) for k, b in enumerate(report.shifts, 1)}),
        "method": report.config.method,
        "ece_before": round(sum(m.ece for m in report.before) / len(report.before), 4),
        "ece_after": round(sum(m.ece for m in report.after) / len(report.after), 4),
        "prompts": f"{report.fit_prompts} fit, {report.test_prompts} test",
        "rounds": report.rounds,
        "calibration": markdown_table(columns, rows),
        "reliability_diagrams": image(plot, "predicted vs observed survival per position"),
    }
