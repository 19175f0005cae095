"""The draft version that serving and evaluation use for a base model (MLflow `champion` alias)."""

import dagster as dg

from assets.speculative_eval import speculative_eval
from dspark_core.recipes.champion import decide_champion
from pipelines.config import ChampionPromotionConfig
from pipelines.metadata import upstream
from pipelines.partitions import model_drafter_partitions, split_partition_key
from pipelines.resources import MLflowResource
from pipelines.tracking import registered_model_name


@dg.asset(partitions_def=model_drafter_partitions, deps=[speculative_eval], group_name="serving", kinds={"mlflow"})
def champion_draft(context: dg.AssetExecutionContext, config: ChampionPromotionConfig,
                   mlflow: MLflowResource) -> dg.MaterializeResult:
    """Promote the evaluated draft version to `champion` of its base model when it is at least as good as
    the current champion (τ measured the same way), or when there is none, and only when it decoded at least
    `min_speedup` times as fast as autoregressive decoding (a draft that slows decoding down is never served).
    Runs only when the blocking checks passed; a draft within the check's margin but below the champion leaves
    the champion in place, and a version that was rolled back is not promoted again automatically
    (`dspark drafts promote` can).
    `dspark drafts rollback BASE_MODEL` moves the alias back."""
    base_model, drafter = split_partition_key(context)
    evaluation = upstream(context, "speculative_eval", str(context.partition_key))
    tracking = mlflow.tracking()
    contender = tracking.contender(base_model, evaluation)
    champion = tracking.champion_measured_like(base_model, evaluation["eval_id"])
    decision = decide_champion(contender, champion, config.to_core())
    if decision.promote:
        tracking.promote(base_model, contender.version)
    context.log.info(f"champion of {base_model}: version {decision.champion_version} "
                     f"({'promoted' if decision.promote else 'kept'}: {decision.reason})")
    return dg.MaterializeResult(metadata={
        "registered_model": registered_model_name(base_model),
        "promoted": decision.promote,
        "reason": decision.reason,
        "champion_version": decision.champion_version,
        "evaluated_version": contender.version,
        "drafter": drafter,
        "tau": contender.tau,
        "speedup": contender.speedup,
        "previous_champion": "none" if champion is None else champion.version,
        "previous_tau": None if champion is None else champion.tau,
    })
