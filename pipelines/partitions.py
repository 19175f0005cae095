"""Partitions: one per registered base model (keys are slugs of model specs), crossed with the drafter
algorithm for the assets that train, export and evaluate a draft."""

import dagster as dg

from dspark_core.drafters.registry import ALGORITHMS

BASE_MODEL = "base_model"  # the dynamic partitions' name, and the base-model dimension
DRAFTER = "drafter"

base_model_partitions = dg.DynamicPartitionsDefinition(name=BASE_MODEL)
drafter_partitions = dg.StaticPartitionsDefinition(list(ALGORITHMS))
model_drafter_partitions = dg.MultiPartitionsDefinition({BASE_MODEL: base_model_partitions, DRAFTER: drafter_partitions})


def model_drafter_key(base_model: str, drafter: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({BASE_MODEL: base_model, DRAFTER: drafter})


def split_partition_key(context) -> tuple[str, str]:
    """(base model, drafter) of a multi-partitioned asset's run."""
    keys = context.partition_key.keys_by_dimension
    return keys[BASE_MODEL], keys[DRAFTER]
