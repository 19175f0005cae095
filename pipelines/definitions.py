"""The one Definitions object of the platform; `dagster dev -w workspace.yaml` loads it (`make ui`)."""

import dagster as dg

from assets.base_model import base_model
from assets.calibrated_draft import calibrated_draft
from assets.champion_draft import champion_draft
from assets.draft_checkpoint import draft_checkpoint
from assets.exported_draft import exported_draft
from assets.metrics_history import metrics_history
from assets.prompt_dataset import prompt_dataset
from assets.speculative_eval import speculative_eval
from assets.target_feature_cache import target_feature_cache
from assets.target_responses import target_responses
from assets.transfer_report import transfer_report
from pipelines.checks import (
    derived_models_keep_their_drafts_tau,
    draft_greedy_lossless,
    draft_weights_finite,
    feature_cache_matches_base_model,
    tau_within_margin_of_champion,
)
from pipelines.jobs import prepare_base_model_job, refresh_metrics_history_job, train_and_evaluate_job, transfer_tests_job
from pipelines.resources import default_resources
from pipelines.schedules import weekly_retraining_schedule
from pipelines.sensors import new_base_model_sensor, refresh_metrics_on_new_eval, train_drafters_on_new_cache

ASSETS = [base_model, prompt_dataset, target_responses, target_feature_cache, draft_checkpoint, calibrated_draft,
          exported_draft, speculative_eval, champion_draft, metrics_history, transfer_report]
CHECKS = [feature_cache_matches_base_model, draft_weights_finite, draft_greedy_lossless, tau_within_margin_of_champion,
          derived_models_keep_their_drafts_tau]

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=[prepare_base_model_job, train_and_evaluate_job, refresh_metrics_history_job, transfer_tests_job],
    sensors=[new_base_model_sensor, train_drafters_on_new_cache, refresh_metrics_on_new_eval],
    schedules=[weekly_retraining_schedule],
    resources=default_resources(),
)
