"""Asset checks. Blocking checks stop what depends on the checked asset: a draft with non-finite weights or
one that changes greedy output is never exported, and a draft worse than the champion is never promoted."""

import dagster as dg

from assets.draft_checkpoint import draft_checkpoint
from assets.speculative_eval import speculative_eval
from assets.target_feature_cache import target_feature_cache
from dspark_core.data.prompts import read_prompt_file
from dspark_core.drafters.runtime import drafter_from_checkpoint
from dspark_core.evaluation.checks import cache_problems, greedy_mismatches, non_finite_tensors
from dspark_core.evaluation.speculative import eval_prompts
from dspark_core.models.registry import spec_for
from pipelines.config import ChampionCheckConfig, LosslessCheckConfig
from pipelines.metadata import upstream, upstream_path
from pipelines.partitions import base_model_partitions, model_drafter_partitions, split_partition_key
from pipelines.resources import MLflowResource, TargetLoader
from pipelines.tracking import tau_tag


def _problems(problems: list[str], ok: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=not problems, metadata={
        "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or ok)})


@dg.asset_check(asset=target_feature_cache, partitions_def=base_model_partitions, blocking=True)
def feature_cache_matches_base_model(context: dg.AssetCheckExecutionContext, targets: TargetLoader) -> dg.AssetCheckResult:
    """The cache manifest names this base model's revision, tokenizer, hidden size and existing layers, and
    every shard's checksum matches."""
    path = upstream_path(context, "target_feature_cache", context.partition_key)
    return _problems(cache_problems(path, targets.load(spec_for(context.partition_key))), "manifest and shards match")


@dg.asset_check(asset=draft_checkpoint, partitions_def=model_drafter_partitions, blocking=True)
def draft_weights_finite(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """Every stored tensor of the draft is free of NaN and infinity."""
    path = upstream_path(context, "draft_checkpoint", str(context.partition_key))
    return _problems(non_finite_tensors(path), "all tensors finite")


@dg.asset_check(asset=draft_checkpoint, partitions_def=model_drafter_partitions, blocking=True)
def draft_greedy_lossless(context: dg.AssetCheckExecutionContext, config: LosslessCheckConfig,
                          targets: TargetLoader) -> dg.AssetCheckResult:
    """Greedy speculative decoding with the draft produces exactly the base model's own greedy output on a
    few held-out prompts."""
    base_model, _ = split_partition_key(context)
    path = upstream_path(context, "draft_checkpoint", str(context.partition_key))
    prompts_file = upstream_path(context, "prompt_dataset", base_model)
    target = targets.load(spec_for(base_model))
    records = [r for r, split in read_prompt_file(prompts_file) if split == "validation"] or \
              [r for r, _ in read_prompt_file(prompts_file)]
    prompts = eval_prompts(target, records, config.prompts)
    mismatches = greedy_mismatches(target, drafter_from_checkpoint(path, target), prompts, config.max_new_tokens)
    return dg.AssetCheckResult(passed=not mismatches, metadata={
        "prompts": len(prompts), "max_new_tokens": config.max_new_tokens,
        "mismatched_prompts": dg.MetadataValue.json(mismatches)})


@dg.asset_check(asset=speculative_eval, partitions_def=model_drafter_partitions, blocking=True)
def tau_within_margin_of_champion(context: dg.AssetCheckExecutionContext, config: ChampionCheckConfig,
                                  mlflow: MLflowResource) -> dg.AssetCheckResult:
    """τ of this draft is not below the current champion's τ (same benchmark, temperature and prompts) by
    more than the margin. Passes when there is no champion yet or the champion is this very version."""
    base_model, _ = split_partition_key(context)
    evaluation = upstream(context, "speculative_eval", str(context.partition_key))
    tau, version = float(evaluation["tau"]), str(evaluation["draft_version"])
    champion = mlflow.tracking().champion(base_model)
    metadata = {"tau": tau, "version": version, "margin": config.tau_margin}
    if champion is None or str(champion.version) == version:
        return dg.AssetCheckResult(passed=True, metadata={**metadata, "champion": "none" if champion is None else "this version"})
    champion_tau = champion.tags.get(tau_tag(evaluation["eval_id"]))
    metadata.update(champion=str(champion.version), champion_tau=float(champion_tau) if champion_tau else None)
    if champion_tau is None:
        return dg.AssetCheckResult(passed=True, metadata={
            **metadata, "note": "the champion was never evaluated this way; τ not compared"})
    return dg.AssetCheckResult(passed=tau >= float(champion_tau) - config.tau_margin, metadata=metadata)


