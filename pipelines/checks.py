"""Asset checks. Blocking checks stop what depends on the checked asset: a draft with non-finite weights or
one that changes greedy output is never exported, and a draft worse than the champion is never promoted.
The checks name their assets by key; `definitions.py` puts assets and checks together."""

import dagster as dg

from dspark_core.drafters.checkpoint import load_drafter
from dspark_core.evaluation.checks import cache_problems, greedy_mismatches, non_finite_tensors
from dspark_core.models.registry import spec_for
from dspark_core.recipes.champion import decide_champion
from dspark_core.recipes.evaluation import held_out_prompts
from pipelines.config import ChampionCheckConfig, LosslessCheckConfig
from pipelines.metadata import upstream, upstream_path
from pipelines.partitions import base_model_partitions, model_drafter_partitions, split_partition_key
from pipelines.resources import MLflowResource, TargetLoader


def _problems(problems: list[str], ok: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=not problems, metadata={
        "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or ok)})


@dg.asset_check(asset="target_feature_cache", partitions_def=base_model_partitions, blocking=True)
def feature_cache_matches_base_model(context: dg.AssetCheckExecutionContext, targets: TargetLoader) -> dg.AssetCheckResult:
    """The cache manifest names this base model's revision, tokenizer, hidden size and existing layers, and
    every shard's checksum matches."""
    path = upstream_path(context, "target_feature_cache", context.partition_key)
    return _problems(cache_problems(path, targets.load(spec_for(context.partition_key))), "manifest and shards match")


@dg.asset_check(asset="draft_checkpoint", partitions_def=model_drafter_partitions, blocking=True)
def draft_weights_finite(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """Every stored tensor of the draft is free of NaN and infinity."""
    path = upstream_path(context, "draft_checkpoint", str(context.partition_key))
    return _problems(non_finite_tensors(path), "all tensors finite")


@dg.asset_check(asset="draft_checkpoint", partitions_def=model_drafter_partitions, blocking=True)
def draft_greedy_lossless(context: dg.AssetCheckExecutionContext, config: LosslessCheckConfig,
                          targets: TargetLoader) -> dg.AssetCheckResult:
    """Greedy speculative decoding with the draft produces exactly the base model's own greedy output on a
    few held-out prompts."""
    base_model, _ = split_partition_key(context)
    check = config.to_core()
    target = targets.load(spec_for(base_model))
    drafter = load_drafter(upstream_path(context, "draft_checkpoint", str(context.partition_key)), target)
    prompts = held_out_prompts(target, upstream_path(context, "prompt_dataset", base_model), check.prompts)
    mismatches = greedy_mismatches(target, drafter, prompts, check.max_new_tokens, block_size=drafter.model.config.block_size)
    return dg.AssetCheckResult(passed=not mismatches, metadata={
        "prompts": len(prompts), "max_new_tokens": check.max_new_tokens,
        "mismatched_prompts": dg.MetadataValue.json(mismatches)})


@dg.asset_check(asset="speculative_eval", partitions_def=model_drafter_partitions, blocking=True)
def tau_within_margin_of_champion(context: dg.AssetCheckExecutionContext, config: ChampionCheckConfig,
                                  mlflow: MLflowResource) -> dg.AssetCheckResult:
    """τ of this draft is not below the current champion's τ (same benchmark, temperature and prompts) by
    more than the margin. Passes when there is no champion yet or the champion is this very version."""
    base_model, _ = split_partition_key(context)
    evaluation = upstream(context, "speculative_eval", str(context.partition_key))
    tracking = mlflow.tracking()
    contender = tracking.contender(base_model, evaluation)
    champion = tracking.champion_measured_like(base_model, evaluation["eval_id"])
    decision = decide_champion(contender, champion, config.to_core())
    return dg.AssetCheckResult(passed=decision.passes_check, metadata={
        "tau": contender.tau, "version": contender.version, "margin": config.tau_margin, "reason": decision.reason,
        "champion": "none" if champion is None else champion.version,
        "champion_tau": None if champion is None else champion.tau})


@dg.asset_check(asset="transfer_report", blocking=False)
def derived_models_keep_their_drafts_tau(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """Every derived base model keeps at least the configured share of τ with its parent's best draft; the
    ones that do not are listed (their retraining was requested)."""
    report = upstream(context, "transfer_report", None)
    requested = report.get("retraining_requested") or {}
    return dg.AssetCheckResult(passed=not requested, severity=dg.AssetCheckSeverity.WARN, metadata={
        "retention_threshold": report.get("retention_threshold"),
        "retraining_requested": dg.MetadataValue.json(requested)})
