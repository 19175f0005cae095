"""Speculative decoding with the exported draft on the evaluation suites, against autoregressive decoding."""

import dagster as dg

from assets.exported_draft import exported_draft
from assets.prompt_dataset import prompt_dataset
from dspark_core.models.registry import spec_for
from dspark_core.recipes.suite_evaluation import evaluate_suite, resolve_suites
from dspark_core.store.acceptance import now_utc
from pipelines.config import SpeculativeEvalConfig
from pipelines.metadata import mlflow_link, run_tags, suite_evaluation_metadata, upstream, upstream_path
from pipelines.partitions import model_drafter_partitions, split_partition_key
from pipelines.resources import MetricsDatabase, MLflowResource, TargetLoader


@dg.asset(partitions_def=model_drafter_partitions, deps=[exported_draft, prompt_dataset], group_name="evaluation",
          kinds={"pytorch", "duckdb", "mlflow"}, pool="metrics_db")
def speculative_eval(context: dg.AssetExecutionContext, config: SpeculativeEvalConfig, targets: TargetLoader,
                     mlflow: MLflowResource, metrics_db: MetricsDatabase) -> dg.MaterializeResult:
    """Decode the evaluation suites' prompts (default: the built-in heldout-v1, math, code and chat; checked
    never to be training prompts) one request at a time with the exported draft and with plain autoregressive
    decoding through the same engine; report τ per benchmark and domain, per-position acceptance, draft/verify
    cost and speed-up. Writes long-form rows to DuckDB `acceptance_metrics` (a re-materialization on the same
    day replaces its own rows) and one MLflow run."""
    base_model, drafter = split_partition_key(context)
    target = targets.load(spec_for(base_model))
    draft = upstream_path(context, "exported_draft", str(context.partition_key))
    version = upstream(context, "exported_draft", str(context.partition_key))["draft_version"]
    evaluation = config.to_core()
    benchmarks = resolve_suites(evaluation.suites, upstream_path(context, "prompt_dataset", base_model))
    report = evaluate_suite(target, {drafter: draft}, benchmarks, evaluation)
    prompts = sum(len(b.records) for b in report.benchmarks)
    tracking = mlflow.tracking()
    with tracking.run(f"eval {drafter} · {base_model}", run_tags(context, "speculative_eval")) as run_id:
        tracking.log_params(run_id, {**config.model_dump(), "base_model": target.spec, "draft_version": version,
                                     "drafter": drafter, "prompts": prompts})
        tracking.log_metrics(run_id, report.metrics(drafter))
        plot = report.acceptance_plot(drafter, draft.parent / f"{draft.name}-acceptance.png")
        tracking.log_artifacts(run_id, plot)
    rows = report.acceptance_rows(base_model=base_model, recorded_at=now_utc(), run_id=context.run.run_id,
                                  mlflow_run_ids={drafter: run_id}, draft_versions={drafter: version})
    store = metrics_db.store()
    written = store.record(rows)
    tracking.record_tau(base_model, version, report.eval_id, report.mean_tau(drafter))  # what the champion rule compares
    return dg.MaterializeResult(metadata={
        **suite_evaluation_metadata(report, drafter, plot), "draft_version": version, "duckdb_rows": written,
        "duckdb_file": dg.MetadataValue.path(str(store.path)), **mlflow_link(tracking, run_id)})
