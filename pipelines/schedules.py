"""Schedules: periodic re-preparation of every registered base model, each adding new prompts to its dataset; the
cache sensor then retrains (continuing from the champion) and re-evaluates, so drafts and metrics accumulate."""

import dagster as dg

from dspark_core.models.registry import registered_models
from pipelines.jobs import prepare_base_model_job
from pipelines.partitions import BASE_MODEL


#: a scheduled preparation adds new prompts to the dataset (answered and cached with the rest; training then
#: continues from the champion on everything accumulated)
GROW = {"ops": {"prompt_dataset": {"config": {"grow": True}}}}


@dg.schedule(job=prepare_base_model_job, cron_schedule="0 3 * * 1", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.RUNNING)
def weekly_retraining_schedule(context: dg.ScheduleEvaluationContext):
    """Every Monday 03:00 UTC: one run per registered base model."""
    known = set(context.instance.get_dynamic_partitions(BASE_MODEL))
    stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")
    models = sorted(slug for slug in registered_models() if slug in known)
    if not models:
        return dg.SkipReason("no registered base model has a partition yet (the new-model sensor adds them)")
    return [dg.RunRequest(run_key=f"weekly:{stamp}:{slug}", partition_key=slug, run_config=GROW) for slug in models]
