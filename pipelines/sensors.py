"""Sensors: a newly registered base model (or one whose retraining the transfer report requested) gets a
partition and its data run; a new feature cache starts training of every drafter; a new evaluation refreshes
metrics_history."""

import json

import dagster as dg

from dspark_core.models.registry import registered_models, retraining_requests
from pipelines.jobs import prepare_base_model_job, refresh_metrics_history_job, train_and_evaluate_job
from pipelines.partitions import base_model_partitions, drafter_partitions, model_drafter_key


@dg.sensor(job=prepare_base_model_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def new_base_model_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """Watch $DSPARK_HOME/models/registered.json (`dspark models register SPEC`): add a base_model partition
    for each new entry and request its data-preparation run (training follows when its cache is ready). A
    retraining request (the transfer report's, when a derived model keeps too little of its parent's τ)
    requests that run again, once per request."""
    known = set(context.instance.get_dynamic_partitions(base_model_partitions.name))
    new = sorted(set(registered_models()) - known)
    requests = [dg.RunRequest(run_key=f"new-base-model:{slug}", partition_key=slug) for slug in new]
    handled = json.loads(context.cursor) if context.cursor else {}  # slug -> time of the last request acted on
    retrain = {slug: request for slug, request in sorted(retraining_requests().items()) if handled.get(slug) != request["at"]}
    requests += [dg.RunRequest(run_key=f"retrain:{slug}:{request['at']}", partition_key=slug,
                               tags={"dspark/retrain_reason": request["reason"][:200]})
                 for slug, request in retrain.items() if slug not in new]  # a new model's first run covers it
    if not requests:
        return dg.SkipReason(f"no newly registered base models or retraining requests ({len(known)} known)")
    return dg.SensorResult(
        dynamic_partitions_requests=[base_model_partitions.build_add_request(new)] if new else [],
        run_requests=requests, cursor=json.dumps({**handled, **{slug: r["at"] for slug, r in retrain.items()}}))


def _new_materializations(context: dg.SensorEvaluationContext, asset: str) -> list[dg.EventLogRecord]:
    """Materializations of `asset` since the last tick whose run succeeded (so its blocking checks passed),
    oldest first — every one, not only the latest. The cursor never moves past a run still in progress.

    The first tick only records where the event log stands: what was materialized before the sensor
    started (say by `make run`) does not start runs."""
    latest = context.instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
    if context.cursor is None:
        context.update_cursor(str(latest[0].storage_id) if latest else "0")
        return []
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=int(context.cursor)),
        limit=100, ascending=True).records
    accepted = []
    for record in records:
        run = context.instance.get_run_by_id(record.run_id) if record.run_id else None
        if run is not None and not run.is_finished:
            break  # look again next tick, once its checks have run
        if run is None or run.is_success:  # reported without a run, or its run (checks included) succeeded
            accepted.append(record)
        context.update_cursor(str(record.storage_id))
    return accepted


@dg.sensor(job=train_and_evaluate_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def train_drafters_on_new_cache(context: dg.SensorEvaluationContext):
    """When a base model's feature cache is (re)materialized, request one train → export → eval → promote
    run per drafter algorithm for that base model."""
    for record in _new_materializations(context, "target_feature_cache"):
        base_model = record.partition_key
        for drafter in drafter_partitions.get_partition_keys():
            yield dg.RunRequest(run_key=f"cache:{record.storage_id}:{drafter}",
                                partition_key=model_drafter_key(base_model, drafter))


@dg.sensor(job=refresh_metrics_history_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def refresh_metrics_on_new_eval(context: dg.SensorEvaluationContext):
    """Re-materialize metrics_history once after new evaluations."""
    records = _new_materializations(context, "speculative_eval")
    if records:
        yield dg.RunRequest(run_key=f"eval:{records[-1].storage_id}")
