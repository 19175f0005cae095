"""The trained draft exported for serving and registered as an MLflow model version."""

import dagster as dg

from assets.calibrated_draft import calibrated_draft
from dspark_core.drafters.checkpoint import read_draft_config
from dspark_core.recipes.export import export
from pipelines.config import ExportDraftConfig
from pipelines.metadata import upstream, upstream_path
from pipelines.partitions import model_drafter_partitions, split_partition_key
from pipelines.resources import MLflowResource
from pipelines.tracking import registered_model_name


@dg.asset(partitions_def=model_drafter_partitions, deps=[calibrated_draft], group_name="serving", kinds={"safetensors", "mlflow"})
def exported_draft(context: dg.AssetExecutionContext, config: ExportDraftConfig, mlflow: MLflowResource) -> dg.MaterializeResult:
    """Export the (calibrated) checkpoint (speculators layout by default, or our Hugging Face-style layout), attach it to
    the training run's MLflow artifacts and register it as a version of `dspark-draft-<base model>`. Runs only
    when the checkpoint's blocking checks (finite weights, greedy losslessness) passed. Exporting the same
    weights again reuses their model version."""
    base_model, drafter = split_partition_key(context)
    checkpoint = upstream_path(context, "calibrated_draft", str(context.partition_key))
    training_run = upstream(context, "draft_checkpoint", str(context.partition_key))["mlflow_run_id"]
    report = export(checkpoint, config.to_core())
    tracking = mlflow.tracking()
    lineage = tracking.lineage(base_model, read_draft_config(checkpoint)["training"])
    version, reused = tracking.register_export(base_model, report.path, training_run, report.weights_sha256, {
        "drafter": drafter, "format": report.format, "checkpoint": str(checkpoint), "dagster.run_id": context.run.run_id,
        **lineage.tags})
    if not reused:
        tracking.describe_version(base_model, version, f"{drafter} draft, {lineage.description}")
    context.log.info(f"version {version} of {registered_model_name(base_model)}" + (" (these weights, registered before)" if reused else ""))
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(report.path)),
        "format": report.format,
        "registered_model": registered_model_name(base_model),
        "draft_version": version,
        "weights_sha256": report.weights_sha256,
        "parent_version": lineage.parent_version or "none",
        "size_mib": report.size_mib,
        "mlflow_run": dg.MetadataValue.url(tracking.run_url(training_run) or tracking.uri),
    })
