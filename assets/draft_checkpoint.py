"""A trained draft module for one base model and one drafter algorithm."""

import dagster as dg

from assets.target_feature_cache import target_feature_cache
from dspark_core.models.registry import spec_for
from dspark_core.recipes.training import train
from pipelines.config import DraftTrainingConfig
from pipelines.metadata import mlflow_link, run_tags, training_metadata, training_progress, upstream_path
from pipelines.partitions import model_drafter_partitions, split_partition_key
from pipelines.resources import MLflowResource, TargetLoader


@dg.asset(partitions_def=model_drafter_partitions, deps=[target_feature_cache], group_name="training",
          kinds={"pytorch", "mlflow"}, pool="dspark_training")
def draft_checkpoint(context: dg.AssetExecutionContext, config: DraftTrainingConfig, targets: TargetLoader,
                     mlflow: MLflowResource) -> dg.MaterializeResult:
    """Train the partition's drafter (DSpark, DFlash or Eagle3) on the base model's feature cache (the `cpu`
    recipe, or the `reference` preset: what DeepSpec trains), logging
    parameters, per-step losses, the loss curve and the checkpoint config to one MLflow run. Checkpoints
    go to $DSPARK_HOME/checkpoints/<base model>/<drafter>/<settings hash>: the same settings and data
    resume (or reuse) the same run; anything changed trains a new one."""
    base_model, drafter = split_partition_key(context)
    target = targets.load(spec_for(base_model))
    cache = upstream_path(context, "target_feature_cache", base_model)
    training = config.training_config(target, drafter)
    tracking = mlflow.tracking()
    with tracking.run(f"train {drafter} · {base_model}", run_tags(context, "draft_checkpoint")) as run_id:
        tracking.log_params(run_id, {"base_model": target.spec, "base_model_revision": target.revision,
                                     "cache": str(cache), "preset": config.preset, **training.to_dict()})
        report = train(target, cache, training, on_log=training_progress(context, training.steps), progress=False)
        tracking.log_params(run_id, {"cache_samples": report.cache_samples})
        tracking.log_history(run_id, report.history)
        for artifact in report.artifacts:
            tracking.log_artifacts(run_id, artifact)
    return dg.MaterializeResult(metadata={**training_metadata(report), **mlflow_link(tracking, run_id)})
