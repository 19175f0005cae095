"""The base model's own answers to the prompts (self-distillation data)."""

import dagster as dg

from assets.prompt_dataset import prompt_dataset
from dspark_core.models.target import load_target_without_weights
from dspark_core.models.registry import spec_for
from dspark_core.recipes.responses import generate_responses
from pipelines.config import TargetResponsesConfig
from pipelines.metadata import upstream
from pipelines.partitions import base_model_partitions
from pipelines.resources import TargetLoader


@dg.asset(partitions_def=base_model_partitions, deps=[prompt_dataset], group_name="data", kinds={"pytorch"})
def target_responses(context: dg.AssetExecutionContext, config: TargetResponsesConfig, targets: TargetLoader) -> dg.MaterializeResult:
    """Have the base model answer every prompt with its recommended sampling settings, storing the exact
    token ids it generated (here, or through an OpenAI-compatible server set in the config: `server`).
    Resumable: an interrupted run continues where it stopped."""
    slug = context.partition_key
    dataset = upstream(context, "prompt_dataset", slug)["dataset"]
    spec = spec_for(slug)
    # With a server (vLLM, SGLang) it runs the model; here only the tokenizer and chat template are needed.
    target = load_target_without_weights(spec) if config.server else targets.load_for_data(spec)
    report = generate_responses(target, dataset, config.to_core())
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(report.path)),
        "dataset": report.dataset,
        "conversations": report.conversations,
        "train": report.splits["train"],
        "validation": report.splits["validation"],
        "response_tokens": report.response_tokens,
        "mean_response_tokens": round(report.mean_response_tokens, 1),
        "tokens_per_s": round(report.response_tokens / report.seconds, 1) if report.seconds > 1 else None,
        "skipped_too_long": len(report.skipped_too_long),
        "sampling": dg.MetadataValue.json(report.sampling),
        "size_mib": report.size_mib,
        "answered_by": f"{report.server['model']} at {report.server['url']}" if report.server else "this machine",
    })
