"""Partitions: one per registered base model (keys are slugs of model specs)."""

import dagster as dg

base_model_partitions = dg.DynamicPartitionsDefinition(name="base_model")
