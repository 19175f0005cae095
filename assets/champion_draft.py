"""The draft version that serving and evaluation use for a base model (MLflow `champion` alias)."""

import dagster as dg

from assets.speculative_eval import speculative_eval
from pipelines.metadata import upstream
from pipelines.partitions import model_drafter_partitions, split_partition_key
from pipelines.resources import MLflowResource
from pipelines.tracking import tau_tag


@dg.asset(partitions_def=model_drafter_partitions, deps=[speculative_eval], group_name="serving", kinds={"mlflow"})
def champion_draft(context: dg.AssetExecutionContext, mlflow: MLflowResource) -> dg.MaterializeResult:
    """Promote the evaluated draft version to `champion` of its base model when it is at least as good as
    the current champion (τ measured the same way), or when there is none. Runs only when the blocking
    checks passed; a draft within the check's margin but below the champion leaves the champion in place,
    and a version that was rolled back is not promoted again automatically (`dspark drafts promote` can).
    `dspark drafts rollback BASE_MODEL` moves the alias back."""
    base_model, drafter = split_partition_key(context)
    evaluation = upstream(context, "speculative_eval", str(context.partition_key))
    version, tau = str(evaluation["draft_version"]), float(evaluation["tau"])
    tracking = mlflow.tracking()
    previous = tracking.champion(base_model)
    measured_alike = None if previous is None else previous.tags.get(tau_tag(evaluation["eval_id"]))
    previous_tau = None if measured_alike is None else float(measured_alike)
    rolled_back = tracking.is_rolled_back(base_model, version)
    if rolled_back:  # a rollback sticks until someone promotes the version again by hand
        promote, reason = False, f"version {version} was rolled back; `dspark drafts promote` re-arms it"
    elif previous is None or str(previous.version) == version or previous_tau is None or tau >= previous_tau:
        promote, reason = True, f"τ {tau:.3f}"
    else:
        promote, reason = False, f"the champion's τ {previous_tau:.3f} is higher than this {drafter} draft's {tau:.3f}"
    if promote:
        tracking.promote(base_model, version)
    champion = version if promote else str(previous.version)
    context.log.info(f"champion of {base_model}: version {champion} ({'promoted' if promote else 'kept'}: {reason})")
    return dg.MaterializeResult(metadata={
        "registered_model": f"dspark-draft-{base_model}",
        "promoted": promote,
        "reason": reason,
        "champion_version": champion,
        "evaluated_version": version,
        "drafter": drafter,
        "tau": tau,
        "previous_champion": "none" if previous is None else str(previous.version),
        "previous_tau": previous_tau,
    })
