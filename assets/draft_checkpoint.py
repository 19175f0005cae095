"""A trained draft module for one base model and one drafter algorithm."""

import dagster as dg

from assets.target_feature_cache import target_feature_cache
from dspark_core.drafters.checkpoint import shape_mismatch
from dspark_core.models.derive import parent_spec
from dspark_core.models.registry import spec_for
from dspark_core.models.spec import slugify
from dspark_core.models.target import load_target_without_weights
from dspark_core.recipes.training import train
from dspark_core.training.warm_start import SHAPE_SETTINGS, Parent, read_parent, shape_conflict
from pipelines.config import DraftTrainingConfig
from pipelines.launchers import StageLauncher, launch_training
from pipelines.metadata import lineage_metadata, mlflow_link, run_tags, training_metadata, training_progress, upstream_path
from pipelines.partitions import model_drafter_partitions, split_partition_key
from pipelines.resources import MLflowResource, TargetLoader
from pipelines.tracking import Tracking, version_label


@dg.asset(partitions_def=model_drafter_partitions, deps=[target_feature_cache], group_name="training",
          kinds={"pytorch", "mlflow"}, pool="dspark_training")
def draft_checkpoint(context: dg.AssetExecutionContext, config: DraftTrainingConfig, targets: TargetLoader,
                     mlflow: MLflowResource, launcher: StageLauncher) -> dg.MaterializeResult:
    """Train the partition's drafter (DSpark, DFlash or Eagle3) on the base model's feature cache (the `cpu`
    recipe, or the `reference` preset: what DeepSpec trains), continuing by default from the base model's
    registered draft of this drafter (the champion when it is one; `continue_from`), and log parameters, lineage,
    per-step losses, the loss curve and the checkpoint config to one MLflow run. Checkpoints go to
    $DSPARK_HOME/checkpoints/<base model>/<drafter>/<settings hash>: the same settings, parent and data resume
    (or reuse) the same run; anything changed trains a new one. Training runs where the `launcher` resource says:
    here, or through Dagster Pipes in a child process (torchrun) or a Kubernetes pod, which reports per-step
    losses and metadata back."""
    base_model, drafter = split_partition_key(context)
    spec = spec_for(base_model)
    # a launched stage loads the weights where it runs; here only the shapes are needed
    target = targets.load(spec) if launcher.in_process else load_target_without_weights(spec)
    cache = upstream_path(context, "target_feature_cache", base_model)
    tracking = mlflow.tracking()
    parent, parent_version = _parent(context, config, tracking, target, base_model, drafter)
    training = config.training_config(target, drafter, parent)
    with tracking.run(f"train {drafter} · {base_model}", run_tags(context, "draft_checkpoint")) as run_id:
        tracking.log_params(run_id, {"base_model": target.spec, "base_model_revision": target.revision,
                                     "cache": str(cache), "preset": config.preset, **training.to_dict(),
                                     "parent_version": parent_version or "none"})
        if launcher.in_process:
            report, launched = train(target, cache, training, on_log=training_progress(context, training.steps),
                                     progress=False), {}
        else:
            report, launched = launch_training(context, launcher, targets.device, targets.dtype, spec, cache, training)
        tracking.log_params(run_id, {"cache_samples": report.cache_samples, "generation": report.generation,
                                     "cumulative_steps": report.cumulative_steps})
        tracking.set_tags(run_id, {"dspark.parent_version": parent_version or "none",
                                   "dspark.generation": str(report.generation)})
        tracking.log_history(run_id, report.history)
        for artifact in report.artifacts:
            tracking.log_artifacts(run_id, artifact)
    return dg.MaterializeResult(metadata={**launched, **training_metadata(report), **lineage_metadata(report, parent_version),
                                          **mlflow_link(tracking, run_id)})


def _parent(context: dg.AssetExecutionContext, config: DraftTrainingConfig, tracking: Tracking, target,
            base_model: str, drafter: str) -> tuple[Parent | None, str | None]:
    """The draft this run continues from and its registered version (None, None: from scratch)."""
    if config.continue_from == "none":
        return None, None
    if config.continue_from != "auto":  # a path the user gave: its shape must fit, or the run fails saying why
        parent = read_parent(config.continue_from)
        sha = parent.lineage()["weights_sha256"]
        return parent, tracking.version_with_weights(base_model, sha)
    owner, version = base_model, tracking.warm_start_version(base_model, drafter)
    if version is None and (origin := parent_spec(target.spec)):  # a derived model grows from its parent's draft
        owner = slugify(origin)
        version = tracking.warm_start_version(owner, drafter)
    if version is None:
        context.log.info(f"no registered {drafter} draft for {base_model}: training from scratch")
        return None, None
    label = version_label(base_model, owner, str(version.version))
    parent = read_parent(tracking.local_path(version))
    fresh = config.training_config(target, drafter)
    if conflict := (shape_mismatch(parent.config, target) or
                    shape_conflict(parent, {name: getattr(fresh, name) for name in SHAPE_SETTINGS})):
        context.log.warning(f"not continuing from version {label} ({conflict}): training from scratch")
        return None, None
    context.log.info(f"continuing from version {label}")
    return parent, label
