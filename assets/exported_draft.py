"""The trained draft exported for serving and registered as an MLflow model version."""

import hashlib

import dagster as dg

from assets.draft_checkpoint import draft_checkpoint
from dspark_core.drafters.checkpoint import WEIGHTS_FILE
from dspark_core.export.formats import export_draft
from dspark_core.paths import dspark_home
from pipelines.config import ExportConfig
from pipelines.metadata import directory_mib, upstream, upstream_path
from pipelines.partitions import model_drafter_partitions, split_partition_key
from pipelines.resources import MLflowResource

WEIGHTS_SHA = "dspark.weights_sha256"


@dg.asset(partitions_def=model_drafter_partitions, deps=[draft_checkpoint], group_name="serving", kinds={"safetensors", "mlflow"})
def exported_draft(context: dg.AssetExecutionContext, config: ExportConfig, mlflow: MLflowResource) -> dg.MaterializeResult:
    """Export the checkpoint (speculators layout by default, or Hugging Face style), attach it to the
    training run's MLflow artifacts and register it as a version of `dspark-draft-<base model>`. Runs only
    when the checkpoint's blocking checks (finite weights, greedy losslessness) passed. Exporting the same
    weights again reuses their model version."""
    base_model, drafter = split_partition_key(context)
    partition = str(context.partition_key)
    checkpoint = upstream_path(context, "draft_checkpoint", partition)
    training_run = upstream(context, "draft_checkpoint", partition)["mlflow_run_id"]
    out = dspark_home() / "exports" / base_model / drafter / f"{checkpoint.parent.name}-{config.format}"
    export_draft(checkpoint, out, config.format)
    weights_sha = hashlib.sha256((out / WEIGHTS_FILE).read_bytes()).hexdigest()

    tracking = mlflow.tracking()
    existing = [v for v in tracking.versions(base_model) if v.tags.get(WEIGHTS_SHA) == weights_sha]
    if existing:
        version = str(existing[-1].version)
        context.log.info(f"these weights are already registered as version {version}")
    else:
        artifact_path = f"exported_draft_{config.format}"
        tracking.log_artifacts(training_run, out, artifact_path)
        version = tracking.register_draft(base_model, tracking.artifact_uri(training_run, artifact_path), training_run, {
            "drafter": drafter, "format": config.format, WEIGHTS_SHA: weights_sha,
            "checkpoint": str(checkpoint), "dagster.run_id": context.run.run_id,
        })
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)),
        "format": config.format,
        "registered_model": f"dspark-draft-{base_model}",
        "draft_version": version,
        "weights_sha256": weights_sha,
        "size_mib": directory_mib(out),
        "mlflow_run": dg.MetadataValue.url(tracking.run_url(training_run) or tracking.uri),
    })
