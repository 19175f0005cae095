"""The draft version that serving and evaluation use for a base model (MLflow `champion` alias)."""

import dagster as dg

from assets.speculative_eval import speculative_eval
from pipelines.metadata import upstream
from pipelines.partitions import model_drafter_partitions, split_partition_key
from pipelines.resources import MLflowResource
from pipelines.tracking import EVAL_TAG, TAU_TAG


@dg.asset(partitions_def=model_drafter_partitions, deps=[speculative_eval], group_name="serving", kinds={"mlflow"})
def champion_draft(context: dg.AssetExecutionContext, mlflow: MLflowResource) -> dg.MaterializeResult:
    """Promote the evaluated draft version to `champion` of its base model when it is at least as good as
    the current champion (τ measured the same way), or when there is none. Runs only when the blocking
    checks passed; a draft within the check's margin but below the champion leaves the champion in place.
    `dspark drafts rollback BASE_MODEL` moves the alias back."""
    base_model, drafter = split_partition_key(context)
    evaluation = upstream(context, "speculative_eval", str(context.partition_key))
    version, tau = str(evaluation["draft_version"]), float(evaluation["tau"])
    tracking = mlflow.tracking()
    previous = tracking.champion(base_model)
    previous_tau = None
    if previous is not None and previous.tags.get(TAU_TAG) and previous.tags.get(EVAL_TAG) == evaluation["eval_id"]:
        previous_tau = float(previous.tags[TAU_TAG])
    promote = previous is None or previous_tau is None or tau >= previous_tau
    if promote:
        tracking.promote(base_model, version)
    champion = version if promote else str(previous.version)
    context.log.info(f"champion of {base_model}: version {champion}"
                     + ("" if promote else f" kept (τ {previous_tau:.3f} ≥ this {drafter} draft's {tau:.3f})"))
    return dg.MaterializeResult(metadata={
        "registered_model": f"dspark-draft-{base_model}",
        "promoted": promote,
        "champion_version": champion,
        "evaluated_version": version,
        "drafter": drafter,
        "tau": tau,
        "previous_champion": "none" if previous is None else str(previous.version),
        "previous_tau": previous_tau,
    })
