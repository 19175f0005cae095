"""The imported base model: an immutable safetensors snapshot of a registered model spec."""

import dagster as dg

from dspark_core.models.registry import spec_for
from dspark_core.models.snapshot import resolve_snapshot
from pipelines.partitions import base_model_partitions


@dg.asset(partitions_def=base_model_partitions, group_name="data", kinds={"pytorch", "safetensors"})
def base_model(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Import the partition's base model once into a content-addressed safetensors snapshot under
    $DSPARK_HOME/models/snapshots (later loads take about a second). The snapshot path, not the weights,
    is what downstream assets receive."""
    spec = spec_for(context.partition_key)
    snapshot = resolve_snapshot(spec)
    info = snapshot.info
    size = sum(f.stat().st_size for f in snapshot.path.iterdir() if f.is_file())
    context.log.info(f"{spec} -> {snapshot.path}")
    return dg.MaterializeResult(
        metadata={
            "spec": spec,
            "snapshot_path": dg.MetadataValue.path(str(snapshot.path)),
            "revision": info["revision"],
            "model_type": info["model_type"],
            "num_layers": info["num_layers"],
            "hidden_size": info["hidden_size"],
            "vocab_size": info["vocab_size"],
            "max_context": info["max_context"],
            "has_chat_template": info["has_chat_template"],
            "snapshot_mib": round(size / 2**20, 1),
        },
        data_version=dg.DataVersion(info["revision"][:16]),
    )
