"""Hidden states of the base model over its own responses: what draft modules train on."""

import dagster as dg

from assets.target_responses import target_responses
from dspark_core.models.registry import spec_for
from dspark_core.recipes.features import build_cache
from pipelines.config import FeatureCacheConfig
from pipelines.launchers import StageLauncher, launch_cache
from pipelines.metadata import upstream
from pipelines.partitions import base_model_partitions
from pipelines.resources import TargetLoader


@dg.asset(partitions_def=base_model_partitions, deps=[target_responses], group_name="data", kinds={"pytorch", "safetensors"})
def target_feature_cache(context: dg.AssetExecutionContext, config: FeatureCacheConfig, targets: TargetLoader,
                         launcher: StageLauncher) -> dg.MaterializeResult:
    """Run the base model over every conversation and store the chosen decoder layers' outputs and the
    pre-LM-head state as safetensors shards with a manifest (revision, layers, tokenizer hash, checksums).
    Resumable per shard; reused when built from the same data and settings (its shards verified first: missing or
    damaged ones are built again); when the dataset grew, only the new conversations run through the model (the
    others' features are copied from the cache's earlier version). Runs where the `launcher` resource says: here,
    or through Dagster Pipes in a child process (torchrun: each rank builds its share of the shards) or a pod."""
    slug = context.partition_key
    dataset = upstream(context, "target_responses", slug)["dataset"]
    if launcher.in_process:
        report, launched = build_cache(targets.load_for_data(spec_for(slug)), dataset, config.to_core()), {}
    else:
        report, launched = launch_cache(context, launcher, targets.device, targets.data_dtype, spec_for(slug),
                                        dataset, config.to_core())
    return dg.MaterializeResult(metadata={**launched,
        "path": dg.MetadataValue.path(str(report.path)),
        "layer_ids": dg.MetadataValue.json(report.layer_ids),
        "samples": report.samples,
        "tokens": report.tokens,
        "assistant_tokens": report.assistant_tokens,
        "shards": report.shards,
        "dtype": report.dtype,
        "size_mib": report.size_mib,
        "reused": report.reused,
        "copied_samples": report.copied_samples,
        "rebuilt_shards": report.rebuilt_shards,
        "target_revision": report.target_revision,
    })
