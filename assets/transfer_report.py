"""Cross-model transfer tests: every base model's latest exported drafts, evaluated unchanged on every
registered base model they fit."""

from pathlib import Path

import dagster as dg

from assets.exported_draft import exported_draft
from dspark_core.models.derive import parent_slugs
from dspark_core.models.registry import registered_models, request_retraining, spec_for
from dspark_core.paths import dspark_home, write_json_atomic
from dspark_core.evaluation.suites import Benchmark, unseen_in_training
from dspark_core.recipes.suite_evaluation import resolve_suites
from dspark_core.recipes.transfer import TrainedDraft, transfer_report as run_transfer
from dspark_core.store.acceptance import now_utc
from pipelines.config import TransferReportConfig
from pipelines.metadata import mlflow_link, run_tags, transfer_metadata
from pipelines.resources import MetricsDatabase, MLflowResource, TargetLoader


def _latest_exports(instance: dg.DagsterInstance, registered: set[str]) -> list[TrainedDraft]:
    """The newest exported draft of each (registered base model, drafter) partition."""
    records = instance.fetch_materializations(dg.AssetKey("exported_draft"), limit=1000).records
    latest: dict[str, TrainedDraft] = {}
    for record in records:  # newest first
        key = record.partition_key
        if key is None or key in latest or key.split("|")[0] not in registered:
            continue
        path = record.asset_materialization.metadata["path"].value
        latest[key] = TrainedDraft.from_path(path)
    return [latest[key] for key in sorted(latest)]


def _training_prompts(instance: dg.DagsterInstance, slug: str) -> Path | None:
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("prompt_dataset"), asset_partitions=[slug]), limit=1).records
    return Path(found[0].asset_materialization.metadata["path"].value) if found else None


def _unseen_suites(instance: dg.DagsterInstance, suites: tuple[str, ...], models: dict) -> list[Benchmark]:
    """The suites' benchmarks, checked against every base model's training prompts."""
    benchmarks = resolve_suites(suites, None)
    for slug in models:
        if (prompts := _training_prompts(instance, slug)) is not None and prompts.exists():
            for benchmark in benchmarks:
                unseen_in_training(benchmark.records, prompts)
    return benchmarks


@dg.asset(deps=[exported_draft], group_name="evaluation", kinds={"pytorch", "duckdb", "mlflow"}, pool="metrics_db")
def transfer_report(context: dg.AssetExecutionContext, config: TransferReportConfig, targets: TargetLoader,
                    mlflow: MLflowResource, metrics_db: MetricsDatabase) -> dg.MaterializeResult:
    """Evaluate the latest exported draft of every (base model, drafter) unchanged on every registered base
    model whose shapes it fits: the transfer matrix (rows: trained on; columns: evaluated on; mean τ over the
    suites) as a table and heat map, τ retention of drafts on models derived from their base model (`dspark
    models derive`), and each family's DSpark gain over DFlash and Eagle3. A derived model on which its
    parent's best draft keeps less than the threshold of its τ gets a retraining request (the new-base-model
    sensor starts its data and training runs). Rows go to DuckDB, one MLflow run holds the matrix."""
    models = registered_models()
    drafts = _latest_exports(context.instance, set(models))
    if not drafts:
        raise dg.Failure("no exported drafts yet; materialize exported_draft for a base model first (`make run`)")
    core = config.to_core()
    benchmarks = _unseen_suites(context.instance, core.suites, models)
    lineage = parent_slugs({slug: entry["spec"] for slug, entry in models.items()})
    loaders = {slug: (lambda spec=entry["spec"]: targets.load(spec)) for slug, entry in models.items()}
    report = run_transfer(drafts, loaders, lineage, benchmarks, core)
    reports = dspark_home() / "reports"
    plot = report.heat_map(reports / "transfer_matrix.png")
    write_json_atomic(reports / "transfer_report.json", report.to_json())
    tracking = mlflow.tracking()
    with tracking.run("transfer report", run_tags(context, "transfer_report")) as run_id:
        tracking.log_params(run_id, {**config.model_dump(), "drafts": len(drafts), "base_models": len(models)})
        tracking.log_metrics(run_id, report.metrics())
        tracking.log_artifacts(run_id, plot)
        tracking.log_artifacts(run_id, reports / "transfer_report.json")
    store = metrics_db.store()
    written = store.record(report.acceptance_rows(recorded_at=now_utc(), run_id=context.run.run_id, mlflow_run_id=run_id))
    for slug, reason in (requested := report.retraining_needed()).items():
        request_retraining(spec_for(slug), reason)
        context.log.warning(f"retraining requested for {slug}: {reason}")
    return dg.MaterializeResult(metadata={
        **transfer_metadata(report, plot, requested), "base_models": len(models), "duckdb_rows": written,
        "duckdb_file": dg.MetadataValue.path(str(store.path)), **mlflow_link(tracking, run_id)})
