"""Jobs: a run targets one partitions definition (inferred from the selected assets), so the chain is split
where the drafter dimension starts."""

import dagster as dg

from pipelines.instance import POOL_TAG

#: run tags the queued run coordinator limits per pool (the PostgreSQL instance's dagster.yaml)
ACCELERATOR = {POOL_TAG: "accelerator"}
METRICS = {POOL_TAG: "metrics"}

prepare_base_model_job = dg.define_asset_job(
    "prepare_base_model",
    selection=dg.AssetSelection.assets("base_model", "prompt_dataset", "target_responses", "target_feature_cache"),
    description="Import a base model, collect prompts, regenerate responses and build its feature cache.",
    tags=ACCELERATOR,
)

train_and_evaluate_job = dg.define_asset_job(
    "train_and_evaluate_draft",
    selection=dg.AssetSelection.assets("draft_checkpoint", "calibrated_draft", "exported_draft", "speculative_eval", "champion_draft"),
    description="Train one drafter for one base model, export and register it, evaluate it, promote it if it passes.",
    tags=ACCELERATOR,
)

refresh_metrics_history_job = dg.define_asset_job(
    "refresh_metrics_history", selection=dg.AssetSelection.assets("metrics_history"),
    description="Re-read the DuckDB views into the metrics_history asset.",
    tags=METRICS,
)

transfer_tests_job = dg.define_asset_job(
    "transfer_tests", selection=dg.AssetSelection.assets("transfer_report"),
    description="Evaluate every base model's latest drafts on every registered base model they fit (the transfer "
                "matrix); request retraining for derived models that keep too little τ.",
    tags=ACCELERATOR,
)
