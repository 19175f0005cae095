"""Partitions: one per registered base model (keys are slugs of model specs), crossed with the drafter
algorithm for the assets that train, export and evaluate a draft."""

import dagster as dg

from dspark_core.training.trainer import ALGORITHMS

base_model_partitions = dg.DynamicPartitionsDefinition(name="base_model")
drafter_partitions = dg.StaticPartitionsDefinition(list(ALGORITHMS))
model_drafter_partitions = dg.MultiPartitionsDefinition({"base_model": base_model_partitions, "drafter": drafter_partitions})


def model_drafter_key(base_model: str, drafter: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"base_model": base_model, "drafter": drafter})


def split_partition_key(context) -> tuple[str, str]:
    """(base model, drafter) of a multi-partitioned asset's run."""
    keys = context.partition_key.keys_by_dimension
    return keys["base_model"], keys["drafter"]
