"""Serving benchmark: throughput against interactivity for R concurrent requests, with and without
confidence-scheduled verification.

For each concurrency R the engine keeps R requests active (continuous batching: a finished request's slot
goes to the next prompt, whose prompt rides along in the next round's pass) over the same prompts of the
built-in held-out suite, greedy, and each method decodes them:

  * autoregressive decoding (the baseline, through the same engine);
  * DFlash at a fixed γ; DSpark at a fixed γ (each `--block-sizes` value);
  * DSpark with a static confidence threshold; DSpark scheduled (the hardware-aware greedy admission over the
    target's measured step-cost profile, up to the draft's γ).

Reported per (method, R): aggregate tokens/s (all requests), per-user tokens/s (each request's tokens over its
time from admission to its last token, averaged), τ, mean verified drafts per round, and whether every output
equals autoregressive decoding. The throughput-vs-interactivity (Pareto) plot, a JSON result file, DuckDB rows
(`benchmark = 'serving:<suite>'`, with `schedule` and `concurrency`) and one MLflow run.

Usage: python benchmarks/bench_serving.py [--dspark DRAFT_DIR] [--dflash DRAFT_DIR] [--concurrency 1,2,4,8]
       [--prompts-per-slot 3] [--max-new-tokens 48] [--block-sizes 2,4] [--threshold 0.3] [--out FILE]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

import dspark_core
from dspark_core.decoding import GenerationConfig, SpeculativeEngine
from dspark_core.decoding.drafter import Drafter
from dspark_core.decoding.scheduler import ScheduleConfig
from dspark_core.decoding.step_cost import ensure_profile
from dspark_core.drafters.checkpoint import load_drafter, read_draft_config
from dspark_core.evaluation.plots import pareto_plot
from dspark_core.evaluation.speculative import eval_prompts
from dspark_core.evaluation.suites import suite_records
from dspark_core.models import load_target
from dspark_core.models.spec import slugify
from dspark_core.paths import dspark_home, write_json_atomic
from dspark_core.store import AcceptanceRow, open_metrics_store
from dspark_core.store.acceptance import measurement_key, now_utc
from dspark_core.provenance import provenance

console = Console(width=160)


@dataclass(frozen=True)
class Method:
    name: str
    drafter: Drafter | None
    algorithm: str  # drafter column of the metrics store
    schedule: ScheduleConfig
    block_size: int


def _interleave_domains(records):
    """Suite prompts alternating between domains, so every R sees the same mix."""
    by_domain: dict[str, list] = {}
    for record in records:
        by_domain.setdefault(record.source, []).append(record)
    mixed = []
    for group in zip(*by_domain.values()):
        mixed.extend(group)
    return mixed


def newest_draft(spec: str, algorithm: str, required: bool = True) -> Path | None:
    """The most recently written draft of `algorithm` for `spec` under $DSPARK_HOME: its calibrated copy if any."""
    runs = sorted((dspark_home() / "checkpoints" / slugify(spec) / algorithm).glob("*/draft"),
                  key=lambda path: path.stat().st_mtime)
    if not runs:
        if required:
            raise SystemExit(f"no trained {algorithm} draft of {spec} under {dspark_home()}; run `make run` or pass "
                             f"--{algorithm} DIR")
        return None
    calibrated = runs[-1].parent / "calibrated"
    return calibrated if calibrated.is_dir() else runs[-1]


def run_method(engine: SpeculativeEngine, prompts: list[list[int]], method: Method, concurrency: int,
               max_new_tokens: int) -> dict:
    config = GenerationConfig(max_new_tokens=max_new_tokens, block_size=method.block_size, speculative=bool(method.drafter),
                              schedule=method.schedule, max_batch=concurrency)
    engine.generate(prompts[:1], GenerationConfig(max_new_tokens=8, block_size=method.block_size,
                                                  speculative=bool(method.drafter), schedule=method.schedule))  # warm-up
    started = time.perf_counter()
    result = engine.generate(prompts, config)
    wall = time.perf_counter() - started
    rounds = [r for o in result.outputs for r in o.rounds]
    return {
        "aggregate_tokens_per_s": result.stats.new_tokens / wall,
        "per_user_tokens_per_s": statistics.mean(len(o.tokens) / o.latency_s for o in result.outputs),
        "tau": result.stats.tau,
        "verified_per_round": statistics.mean(r.proposed for r in rounds),
        "draft_ms_per_round": result.stats.draft_ms_per_round,
        "verify_ms_per_round": result.stats.verify_ms_per_round,
        "new_tokens": result.stats.new_tokens,
        "rounds": len(rounds),
        "wall_s": wall,
        "outputs": [o.tokens for o in result.outputs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--dspark", type=Path, help="trained DSpark draft (default: the newest one of the target "
                        "under $DSPARK_HOME, calibrated if it was, e.g. by `make run`)")
    parser.add_argument("--dflash", type=Path, help="trained DFlash draft (default: the newest one, likewise)")
    parser.add_argument("--suite", default="heldout-v1")
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--prompts-per-slot", type=int, default=3, help="prompts decoded per concurrent slot")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--block-sizes", default="2,4", help="fixed γ values to compare")
    parser.add_argument("--threshold", type=float, default=ScheduleConfig().threshold)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serving-cpu.json")
    parser.add_argument("--no-record", action="store_true", help="skip DuckDB and MLflow")
    args = parser.parse_args(argv)

    target = load_target(args.target, device=args.device)
    args.dspark = args.dspark or newest_draft(target.spec, "dspark")
    args.dflash = args.dflash or newest_draft(target.spec, "dflash", required=False)
    profile, reason = ensure_profile(target, progress=True)
    console.print(f"step-cost profile: {'measured now (' + reason + ')' if reason else 'stored'} {profile.path}")
    dspark = load_drafter(args.dspark, target)
    gamma = dspark.block_size
    methods = [Method("autoregressive", None, "none", ScheduleConfig(), 0)]
    if args.dflash:
        dflash = load_drafter(args.dflash, target)
        methods += [Method(f"dflash γ{b}", dflash, "dflash", ScheduleConfig(), b)
                    for b in map(int, args.block_sizes.split(","))]
    methods += [Method(f"dspark γ{b}", dspark, "dspark", ScheduleConfig(), b) for b in map(int, args.block_sizes.split(","))]
    methods += [Method(f"dspark threshold {args.threshold}", dspark, "dspark",
                       ScheduleConfig(mode="threshold", threshold=args.threshold), gamma),
                Method("dspark scheduled", dspark, "dspark", ScheduleConfig(mode="scheduled"), gamma)]

    records = _interleave_domains(suite_records(args.suite))
    concurrency = [int(r) for r in args.concurrency.split(",")]
    results = []
    for r in concurrency:
        prompts = [p.ids for p in eval_prompts(target, records, r * args.prompts_per_slot)]
        reference = None
        for method in methods:
            engine = SpeculativeEngine(target, method.drafter, step_costs=profile)
            measured = run_method(engine, prompts, method, r, args.max_new_tokens)
            outputs = measured.pop("outputs")
            reference = outputs if method.drafter is None else reference
            measured.update(method=method.name, algorithm=method.algorithm, schedule=method.schedule.mode,
                            block_size=method.block_size, concurrency=r, prompts=len(prompts),
                            identical_to_autoregressive=outputs == reference)
            results.append(measured)
            console.print(f"R={r:<2} {method.name:<24} aggregate {measured['aggregate_tokens_per_s']:6.1f} tok/s  "
                          f"per user {measured['per_user_tokens_per_s']:5.1f} tok/s  τ {measured['tau']:.2f}  "
                          f"verified/round {measured['verified_per_round']:.2f}  identical {measured['identical_to_autoregressive']}",
                          highlight=False)

    table = Table(title=f"serving: {target.spec}, {args.suite}, greedy, {args.max_new_tokens} tokens per request")
    for column in ("method", "R", "aggregate tok/s", "per-user tok/s", "τ", "verified/round", "draft ms", "verify ms",
                   "vs AR", "identical"):
        table.add_column(column, justify="right")
    for row in results:
        base = next(b for b in results if b["concurrency"] == row["concurrency"] and b["algorithm"] == "none")
        table.add_row(row["method"], str(row["concurrency"]), f"{row['aggregate_tokens_per_s']:.1f}",
                      f"{row['per_user_tokens_per_s']:.1f}", f"{row['tau']:.2f}", f"{row['verified_per_round']:.2f}",
                      f"{row['draft_ms_per_round']:.1f}", f"{row['verify_ms_per_round']:.1f}",
                      f"{row['aggregate_tokens_per_s'] / base['aggregate_tokens_per_s']:.2f}x",
                      str(row["identical_to_autoregressive"]))
    console.print(table)

    plot = args.out.with_suffix(".png")
    series: dict[str, list] = {}
    for row in results:
        series.setdefault(row["method"], []).append(
            (row["per_user_tokens_per_s"], row["aggregate_tokens_per_s"], f"R={row['concurrency']}"))
    pareto_plot(series, plot, title=f"{target.spec}: throughput vs interactivity")
    payload = {
        "benchmark": "bench_serving", "command": " ".join(["python", *sys.argv]), **provenance(),
        "target": target.spec, "target_revision": target.revision, "suite": args.suite,
        "drafts": {"dspark": str(args.dspark), "dflash": str(args.dflash) if args.dflash else None,
                   "dspark_confidence_temperatures": list(read_draft_config(args.dspark)["module"].get(
                       "confidence_temperatures") or [])},
        "step_cost_profile": profile.to_dict(), "max_new_tokens": args.max_new_tokens, "results": results,
        "plot": str(plot.relative_to(Path(__file__).parent.parent)) if plot.is_relative_to(Path(__file__).parent.parent) else str(plot),
    }
    write_json_atomic(args.out, payload)
    console.print(f"results: {args.out}\nplot: {plot}")
    if not args.no_record:
        _record(payload, results, target, args, plot)
    return 0


def _record(payload: dict, results: list[dict], target, args, plot: Path) -> None:
    """DuckDB rows (one measurement per method and R) and one MLflow run with every number and the plot."""
    from pipelines.tracking import Tracking

    recorded_at, base_model = now_utc(), slugify(target.spec)
    store = open_metrics_store()
    written = 0
    for row in results:
        key = measurement_key(benchmark="serving", base_model=base_model, method=row["method"], concurrency=row["concurrency"],
                              prompts=row["prompts"], code_version=dspark_core.__version__, day=recorded_at.date().isoformat())
        shared = dict(recorded_at=recorded_at, measurement_key=key, run_id=None, mlflow_run_id=None, base_model=base_model,
                      base_model_revision=target.revision, drafter=row["algorithm"],
                      draft_checkpoint=str(args.dspark if row["algorithm"] == "dspark" else args.dflash or ""),
                      draft_version=None, benchmark=f"serving:{args.suite}", temperature=0.0,
                      block_size=row["block_size"], code_version=dspark_core.__version__, schedule=row["schedule"],
                      concurrency=row["concurrency"])
        written += store.record([AcceptanceRow(**shared, metric=metric, value=float(row[metric]), n=row["new_tokens"])
                                 for metric in ("aggregate_tokens_per_s", "per_user_tokens_per_s", "tau")])
    tracking = Tracking(experiment="dspark-benchmarks")
    with tracking.run(f"serving · {target.spec}", {"benchmark": "bench_serving"}) as run_id:
        tracking.log_params(run_id, {"target": target.spec, "suite": args.suite, "concurrency": args.concurrency,
                                     "max_new_tokens": args.max_new_tokens, "git_commit": payload["git_commit"]})
        tracking.log_metrics(run_id, {re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{metric}.{row['method']}.R{row['concurrency']}"): float(row[metric])
                                      for row in results for metric in ("aggregate_tokens_per_s", "per_user_tokens_per_s")})
        tracking.log_artifacts(run_id, plot)
        tracking.log_artifacts(run_id, args.out)
    console.print(f"recorded {written} rows in {store.path}; MLflow run {run_id}")


if __name__ == "__main__":
    raise SystemExit(main())
