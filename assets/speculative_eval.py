"""Speculative decoding with the exported draft on held-out prompts, against autoregressive decoding."""

import hashlib
import json
from dataclasses import asdict

import dagster as dg

import dspark_core
from assets.exported_draft import exported_draft
from dspark_core.data.prompts import read_prompt_file
from dspark_core.drafters.runtime import drafter_from_checkpoint
from dspark_core.evaluation.plots import acceptance_curves
from dspark_core.evaluation.speculative import EvalSettings, decode_prompts, eval_prompts, mismatched_prompts, summarize
from dspark_core.models.registry import spec_for
from dspark_core.store import AcceptanceRow, measurement_key
from dspark_core.store.acceptance import now_utc
from dspark_core.store.rows import acceptance_rows
from pipelines.config import SpeculativeEvalConfig
from pipelines.metadata import image, markdown_table, run_tags, upstream, upstream_path
from pipelines.partitions import model_drafter_partitions, split_partition_key
from pipelines.resources import MetricsDatabase, MLflowResource, TargetLoader
from pipelines.tracking import EVAL_TAG, TAU_TAG, tau_tag


@dg.asset(partitions_def=model_drafter_partitions, deps=[exported_draft], group_name="evaluation",
          kinds={"pytorch", "duckdb", "mlflow"}, pool="metrics_db")
def speculative_eval(context: dg.AssetExecutionContext, config: SpeculativeEvalConfig, targets: TargetLoader,
                     mlflow: MLflowResource, metrics_db: MetricsDatabase) -> dg.MaterializeResult:
    """Decode the held-out (validation) prompts one request at a time with the exported draft and with plain
    autoregressive decoding through the same engine; report τ, per-position acceptance, draft/verify cost
    and speed-up per domain and context bucket. Writes long-form rows to DuckDB `acceptance_metrics` (a
    re-materialization on the same day replaces its own rows) and one MLflow run."""
    base_model, drafter_name = split_partition_key(context)
    partition = str(context.partition_key)
    spec = spec_for(base_model)
    export = upstream(context, "exported_draft", partition)
    export_path = upstream_path(context, "exported_draft", partition)
    prompts_file = upstream_path(context, "prompt_dataset", base_model)
    target = targets.load(spec)
    drafter = drafter_from_checkpoint(export_path, target)
    settings = EvalSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            block_size=drafter.model.config.block_size)
    held_out = [record for record, split in read_prompt_file(prompts_file) if split == "validation"]
    if not held_out:
        raise dg.Failure(f"{prompts_file} has no validation prompts; raise validation_fraction of prompt_dataset")
    prompts = eval_prompts(target, held_out, config.max_prompts)

    decode_prompts(target, drafter, prompts[:1], EvalSettings(max_new_tokens=8), progress=False)  # warm-up
    baseline = decode_prompts(target, None, prompts, settings, progress=False)
    results = decode_prompts(target, drafter, prompts, settings, progress=False)
    summaries = summarize(results, baseline, settings.block_size)
    overall = summaries[0]
    mismatches = mismatched_prompts(results, baseline) if config.temperature == 0 else []

    tracking = mlflow.tracking()
    with tracking.run(f"eval {drafter_name} · {base_model}", run_tags(context, "speculative_eval")) as run_id:
        tracking.log_params(run_id, {**config.model_dump(), "base_model": spec, "draft_version": export["draft_version"],
                                     "drafter": drafter_name, "prompts": len(prompts)})
        tracking.log_metrics(run_id, {"tau": overall.tau, "speedup": overall.speedup, "tokens_per_s": overall.tokens_per_s,
                                      "draft_ms_per_round": overall.draft_ms_per_round,
                                      "verify_ms_per_round": overall.verify_ms_per_round,
                                      **{f"prefix_accept_{k}": rate for k, (rate, _) in enumerate(overall.prefix_accept, 1)
                                         if rate is not None}})
        plot = acceptance_curves({"prefix acceptance": [r for r, _ in overall.prefix_accept],
                                  "conditional acceptance": [r for r, _ in overall.cond_accept]},
                                 export_path.parent / f"{export_path.name}-acceptance.png",
                                 title=f"{drafter_name} on {base_model}, τ {overall.tau:.2f}")
        tracking.log_artifacts(run_id, plot)

    recorded_at = now_utc()
    key = measurement_key(asset="speculative_eval", partition=partition, weights=export["weights_sha256"],
                          settings=asdict(settings), benchmark=config.benchmark, prompts=[p.id for p in prompts],
                          code_version=dspark_core.__version__, day=recorded_at.date().isoformat())
    rows = acceptance_rows(AcceptanceRow(
        recorded_at=recorded_at, measurement_key=key, run_id=context.run.run_id, mlflow_run_id=run_id,
        base_model=base_model, base_model_revision=target.revision, drafter=drafter_name,
        draft_checkpoint=str(export_path), draft_version=export["draft_version"], benchmark=config.benchmark,
        temperature=config.temperature, block_size=settings.block_size, code_version=dspark_core.__version__,
    ), summaries)
    store = metrics_db.store()
    written = store.replace_measurement(key, rows)
    # The champion check compares τ measured the same way.
    eval_id = json.dumps({"benchmark": config.benchmark, "temperature": config.temperature,
                          "max_new_tokens": config.max_new_tokens, "prompts": hashlib.sha256(
                              "".join(p.id for p in prompts).encode()).hexdigest()[:12]}, sort_keys=True)
    tracking.tag_version(base_model, export["draft_version"], {
        tau_tag(eval_id): f"{overall.tau:.6f}", TAU_TAG: f"{overall.tau:.6f}", EVAL_TAG: eval_id})

    table = [[s.domain, s.context_bucket, s.prompts, s.tau, s.speedup, s.draft_ms_per_round, s.verify_ms_per_round,
              " ".join("–" if r is None else f"{r:.2f}" for r, _ in s.cond_accept)] for s in summaries]
    return dg.MaterializeResult(metadata={
        "tau": round(overall.tau, 4),
        "speedup": round(overall.speedup, 3),
        "tokens_per_s": round(overall.tokens_per_s, 2),
        "draft_ms_per_round": round(overall.draft_ms_per_round, 2),
        "verify_ms_per_round": round(overall.verify_ms_per_round, 2),
        "greedy_identical": (not mismatches) if config.temperature == 0 else "n/a (sampled)",
        "prompts": len(prompts),
        "draft_version": export["draft_version"],
        "eval_id": eval_id,
        "results": markdown_table(["domain", "context", "prompts", "τ", "speed-up", "draft ms", "verify ms",
                                   "cond. accept @k"], table),
        "acceptance_curve": image(plot, "acceptance by position"),
        "duckdb_rows": written,
        "duckdb_file": dg.MetadataValue.path(str(store.path)),
        "mlflow_run_id": run_id,
        "mlflow_run": dg.MetadataValue.url(tracking.run_url(run_id) or tracking.uri),
    })
