"""The base model's own answers to the prompts (self-distillation data)."""

import dagster as dg

from assets.prompt_dataset import prompt_dataset
from dspark_core.data import layout
from dspark_core.data.prompts import read_prompt_file
from dspark_core.data.regenerate import RegenerationConfig, regenerate_responses
from dspark_core.models.registry import spec_for
from pipelines.config import TargetResponsesConfig
from pipelines.metadata import directory_mib, upstream, upstream_path
from pipelines.partitions import base_model_partitions
from pipelines.resources import TargetLoader


@dg.asset(partitions_def=base_model_partitions, deps=[prompt_dataset], group_name="data", kinds={"pytorch"})
def target_responses(context: dg.AssetExecutionContext, config: TargetResponsesConfig, targets: TargetLoader) -> dg.MaterializeResult:
    """Have the base model answer every prompt with its recommended sampling settings, storing the exact
    token ids it generated. Resumable: an interrupted run continues where it stopped."""
    spec = spec_for(context.partition_key)
    prompts_file = upstream_path(context, "prompt_dataset", context.partition_key)
    dataset = upstream(context, "prompt_dataset", context.partition_key)["dataset"]
    target = targets.load(spec)
    out = layout.responses_dir(dataset, spec)
    manifest = regenerate_responses(
        target, read_prompt_file(prompts_file), out,
        RegenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, seed=config.seed),
    )
    conversations = manifest["conversations"]
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)),
        "dataset": dataset,
        "conversations": conversations,
        "train": manifest["splits"]["train"],
        "validation": manifest["splits"]["validation"],
        "response_tokens": manifest["response_tokens"],
        "mean_response_tokens": round(manifest["response_tokens"] / max(conversations, 1), 1),
        "skipped_too_long": len(manifest["skipped_too_long"]),
        "sampling": dg.MetadataValue.json(manifest["settings"]["sampling"]),
        "size_mib": directory_mib(out),
    })
