"""A trained draft module for one base model and one drafter algorithm."""

import hashlib
import json

import dagster as dg
from safetensors import safe_open

from assets.target_feature_cache import target_feature_cache
from dspark_core.data.feature_cache import FeatureCache
from dspark_core.drafters.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from dspark_core.evaluation.plots import loss_curve
from dspark_core.models.registry import spec_for
from dspark_core.paths import dspark_home
from dspark_core.training.trainer import TrainConfig, train_draft
from pipelines.config import DraftTrainingConfig
from pipelines.metadata import image, markdown_table, run_tags, upstream_path
from pipelines.partitions import model_drafter_partitions, split_partition_key
from pipelines.resources import MLflowResource, TargetLoader


@dg.asset(partitions_def=model_drafter_partitions, deps=[target_feature_cache], group_name="training",
          kinds={"pytorch", "mlflow"}, pool="dspark_training")
def draft_checkpoint(context: dg.AssetExecutionContext, config: DraftTrainingConfig, targets: TargetLoader,
                     mlflow: MLflowResource) -> dg.MaterializeResult:
    """Train the partition's drafter (DSpark, DFlash or Eagle3) on the base model's feature cache, logging
    parameters, per-step losses, the loss curve and the checkpoint config to one MLflow run. Checkpoints
    go to $DSPARK_HOME/checkpoints/<base model>/<drafter>/<settings hash>: the same settings and data
    resume (or reuse) the same run; anything changed trains a new one."""
    base_model, drafter = split_partition_key(context)
    spec = spec_for(base_model)
    cache_path = upstream_path(context, "target_feature_cache", base_model)
    target = targets.load(spec)
    cache = FeatureCache(cache_path, target_revision=target.revision, split="train")
    train_config = TrainConfig(algorithm=drafter, steps=config.steps, batch_size=config.batch_size,
                               learning_rate=config.learning_rate, block_size=config.block_size, head=config.head,
                               draft_vocab_size=config.draft_vocab_size, seed=config.seed)
    fingerprint = {"training": train_config.to_dict(), "cache": str(cache_path),
                   "samples_hash": cache.manifest["samples_hash"], "revision": target.revision}
    settings_hash = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    out_dir = dspark_home() / "checkpoints" / base_model / drafter / settings_hash

    tracking = mlflow.tracking()
    with tracking.run(f"train {drafter} · {base_model}", run_tags(context, "draft_checkpoint")) as run_id:
        tracking.log_params(run_id, {"base_model": spec, "base_model_revision": target.revision,
                                     "cache": str(cache_path), "cache_samples": len(cache), **train_config.to_dict()})
        def log_progress(step: int, metrics: dict) -> None:
            if step % 50 == 0 or step == train_config.steps:
                context.log.info(f"step {step}/{train_config.steps}: loss {metrics['loss']:.4f}, "
                                 f"expected τ {metrics['expected_tau']:.2f}")

        result = train_draft(target, cache, out_dir, train_config, progress=False, on_log=log_progress)
        tracking.log_history(run_id, result.history)
        plot = loss_curve(result.history, out_dir / "loss_curve.png", title=f"{drafter} on {base_model}")
        for artifact in (plot, result.checkpoint / CONFIG_FILE, out_dir / "metrics.jsonl"):
            tracking.log_artifacts(run_id, artifact)

    final = result.final_metrics
    block = train_config.block_size
    with safe_open(str(result.checkpoint / WEIGHTS_FILE), framework="pt") as handle:
        parameters = sum(_numel(handle.get_slice(name).get_shape()) for name in handle.keys())
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(result.checkpoint)),
        "algorithm": drafter,
        "steps": result.steps,
        "final_loss": final.get("loss"),
        "expected_tau": final.get("expected_tau"),
        "stored_parameters": parameters,
        "analytic_acceptance": markdown_table(
            ["position k", "acceptance (training batch)"],
            [[k, final.get(f"accept_{k}")] for k in range(1, block + 1)]),
        "loss_curve": image(plot, "loss curve"),
        "mlflow_run_id": run_id,
        "mlflow_run": dg.MetadataValue.url(tracking.run_url(run_id) or tracking.uri),
    })


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total
