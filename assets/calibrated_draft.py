"""The trained draft with calibrated confidences (sequential temperature scaling), between training and export."""

import dagster as dg

from assets.draft_checkpoint import draft_checkpoint
from assets.prompt_dataset import prompt_dataset
from dspark_core.evaluation.speculative import eval_prompts
from dspark_core.evaluation.suites import suite_records, unseen_in_training
from dspark_core.models.registry import spec_for
from dspark_core.recipes.calibration import calibrate
from dspark_core.store.acceptance import now_utc
from pipelines.config import CalibratedDraftConfig
from pipelines.metadata import calibration_metadata, mlflow_link, run_tags, upstream_path
from pipelines.partitions import model_drafter_partitions, split_partition_key
from pipelines.resources import MetricsDatabase, MLflowResource, TargetLoader


@dg.asset(partitions_def=model_drafter_partitions, deps=[draft_checkpoint, prompt_dataset], group_name="training",
          kinds={"pytorch", "duckdb", "mlflow"}, pool="metrics_db")
def calibrated_draft(context: dg.AssetExecutionContext, config: CalibratedDraftConfig, targets: TargetLoader,
                     mlflow: MLflowResource, metrics_db: MetricsDatabase) -> dg.MaterializeResult:
    """Decode prompts of a built-in suite the draft never trained on, with its whole block verified; fit one
    temperature per draft position so that the product of the confidences predicts how far a block survives
    (ECE minimised left to right on half of the prompts), and report ECE, AUROC and Brier per position before
    and after on the other half (reliability diagrams below, rows in DuckDB, one MLflow run). Writes the
    calibrated draft beside the trained one; a draft without a confidence head (DFlash, Eagle3) passes through."""
    base_model, drafter = split_partition_key(context)
    target = targets.load(spec_for(base_model))
    checkpoint = upstream_path(context, "draft_checkpoint", str(context.partition_key))
    calibration = config.to_core()
    records = unseen_in_training(suite_records(calibration.suite), upstream_path(context, "prompt_dataset", base_model))
    report = calibrate(target, checkpoint, eval_prompts(target, records, calibration.max_prompts), calibration)
    if report.skipped:
        context.log.info(report.skipped)
        return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(checkpoint)), "calibrated": False,
                                              "note": report.skipped})
    tracking = mlflow.tracking()
    with tracking.run(f"calibrate {drafter} · {base_model}", run_tags(context, "calibrated_draft")) as run_id:
        tracking.log_params(run_id, {**config.model_dump(), "base_model": target.spec, "drafter": drafter})
        tracking.log_metrics(run_id, report.metrics())
        plot = report.plot(checkpoint.parent / "calibration-reliability.png")
        tracking.log_artifacts(run_id, plot)
    store = metrics_db.store()
    written = store.record(report.acceptance_rows(base_model=base_model, recorded_at=now_utc(),
                                                  run_id=context.run.run_id, mlflow_run_id=run_id))
    return dg.MaterializeResult(metadata={**calibration_metadata(report, plot), "calibrated": True,
                                          "duckdb_rows": written, **mlflow_link(tracking, run_id)})
