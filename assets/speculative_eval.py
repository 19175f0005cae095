"""Speculative decoding with the exported draft on held-out prompts, against autoregressive decoding."""

import dagster as dg

from assets.exported_draft import exported_draft
from assets.prompt_dataset import prompt_dataset
from dspark_core.models.registry import spec_for
from dspark_core.recipes.evaluation import evaluate, held_out_prompts
from dspark_core.store.acceptance import now_utc
from pipelines.config import SpeculativeEvalConfig
from pipelines.metadata import evaluation_metadata, mlflow_link, run_tags, upstream, upstream_path
from pipelines.partitions import model_drafter_partitions, split_partition_key
from pipelines.resources import MetricsDatabase, MLflowResource, TargetLoader


@dg.asset(partitions_def=model_drafter_partitions, deps=[exported_draft, prompt_dataset], group_name="evaluation",
          kinds={"pytorch", "duckdb", "mlflow"}, pool="metrics_db")
def speculative_eval(context: dg.AssetExecutionContext, config: SpeculativeEvalConfig, targets: TargetLoader,
                     mlflow: MLflowResource, metrics_db: MetricsDatabase) -> dg.MaterializeResult:
    """Decode the held-out (validation) prompts one request at a time with the exported draft and with plain
    autoregressive decoding through the same engine; report τ, per-position acceptance, draft/verify cost
    and speed-up per domain and context bucket. Writes long-form rows to DuckDB `acceptance_metrics` (a
    re-materialization on the same day replaces its own rows) and one MLflow run."""
    base_model, drafter = split_partition_key(context)
    target = targets.load(spec_for(base_model))
    draft = upstream_path(context, "exported_draft", str(context.partition_key))
    version = upstream(context, "exported_draft", str(context.partition_key))["draft_version"]
    evaluation = config.to_core()
    prompts = held_out_prompts(target, upstream_path(context, "prompt_dataset", base_model), evaluation.max_prompts)
    report = evaluate(target, draft, prompts, evaluation)
    tracking = mlflow.tracking()
    with tracking.run(f"eval {drafter} · {base_model}", run_tags(context, "speculative_eval")) as run_id:
        tracking.log_params(run_id, {**config.model_dump(), "base_model": target.spec, "draft_version": version,
                                     "drafter": drafter, "prompts": len(prompts)})
        tracking.log_metrics(run_id, report.metrics())
        plot = report.acceptance_plot(draft.parent / f"{draft.name}-acceptance.png")
        tracking.log_artifacts(run_id, plot)
    rows = report.acceptance_rows(base_model=base_model, recorded_at=now_utc(), run_id=context.run.run_id,
                                  mlflow_run_id=run_id, draft_version=version)
    store = metrics_db.store()
    written = store.record(rows)
    tracking.record_tau(base_model, version, report.eval_id, report.overall.tau)  # what the champion rule compares
    return dg.MaterializeResult(metadata={
        **evaluation_metadata(report, plot), "draft_version": version, "duckdb_rows": written,
        "duckdb_file": dg.MetadataValue.path(str(store.path)), **mlflow_link(tracking, run_id)})
