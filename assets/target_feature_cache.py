"""Hidden states of the base model over its own responses: what draft modules train on."""

import dagster as dg

from assets.target_responses import target_responses
from dspark_core.data import layout
from dspark_core.data.feature_cache import CacheConfig, build_feature_cache, default_layer_ids
from dspark_core.data.regenerate import read_responses
from dspark_core.models.registry import spec_for
from pipelines.config import FeatureCacheConfig
from pipelines.metadata import upstream, upstream_path
from pipelines.partitions import base_model_partitions
from pipelines.resources import TargetLoader


@dg.asset(partitions_def=base_model_partitions, deps=[target_responses], group_name="data", kinds={"pytorch", "safetensors"})
def target_feature_cache(context: dg.AssetExecutionContext, config: FeatureCacheConfig, targets: TargetLoader) -> dg.MaterializeResult:
    """Run the base model over every conversation and store the chosen decoder layers' outputs and the
    pre-LM-head state as safetensors shards with a manifest (revision, layers, tokenizer hash, checksums).
    Resumable per shard; reused when built from the same data and settings."""
    spec = spec_for(context.partition_key)
    responses = upstream_path(context, "target_responses", context.partition_key)
    dataset = upstream(context, "target_responses", context.partition_key)["dataset"]
    target = targets.load(spec)
    layers = tuple(config.layer_ids) or default_layer_ids(target.num_layers, config.num_layers)
    responses_manifest, conversations = read_responses(responses)
    out = layout.cache_dir(dataset, spec, layers, config.dtype)
    manifest = build_feature_cache(
        target, conversations, out, CacheConfig(layer_ids=layers, dtype=config.dtype, max_length=config.max_length),
        source={"responses": str(responses), "target_revision": responses_manifest["target_revision"]},
    )
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)),
        "layer_ids": dg.MetadataValue.json(manifest["layer_ids"]),
        "samples": manifest["num_samples"],
        "tokens": manifest["num_tokens"],
        "assistant_tokens": manifest["assistant_tokens"],
        "shards": len(manifest["shards"]),
        "dtype": manifest["dtype"],
        "size_mib": round(manifest["bytes"] / 2**20, 1),
        "target_revision": manifest["target_revision"],
    })
