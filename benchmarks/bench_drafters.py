"""Self-distil a target, train DSpark, DFlash and Eagle3 on the same data for the same wall-clock time, and
compare them on held-out prompts against autoregressive decoding — every stage the library's recipe (the
same the Dagster assets and the `dspark` command line run).

  1. domain-steered self-generated prompts (math, code, chat, writing);
  2. the target's own responses; 3. the feature cache;
  4. DSpark, DFlash and Eagle3 with the default recipe, each for the same training time;
  5. greedy decoding of the built-in held-out suite (math, code, chat; checked by content hash never to be
     a training prompt) with autoregressive, prompt lookup and each draft: τ per domain, per-position
     acceptance, draft/verify ms per round, speed-up over autoregressive, equality with autoregressive.
Every stage's throughput (prompts/s, tokens/s, positions/s) is recorded. Stages already done under
$DSPARK_HOME are reused, so an interrupted run resumes.

Presets: `cpu` (the default: about 45 minutes on 2 cores), `gpu` (a 10-minute window on one large GPU,
model load included: at least a million response tokens, training under torchrun as `dspark train --nproc`;
`--checkpoints-out` receives the trained drafts so that they can be evaluated on CPU too), `smoke` (minutes;
exercises every stage on any device). It needs torch and transformers, not Dagster, MLflow or DuckDB.

Usage: python benchmarks/bench_drafters.py [--preset cpu|gpu|smoke] [--nproc N] [--out FILE] [--checkpoints-out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dspark_core.data.feature_cache import CacheConfig, FeatureCache
from dspark_core.data.regenerate import RegenerationConfig
from dspark_core.data.selfgen import DOMAIN_OPENINGS
from dspark_core.data.sources import PromptsConfig
from dspark_core.decoding import PromptLookupDrafter
from dspark_core.drafters.registry import ALGORITHMS
from dspark_core.device import DATA_DTYPE_HELP
from dspark_core.distributed import launch
from dspark_core.evaluation.speculative import eval_prompts
from dspark_core.evaluation.suites import suite_records, unseen_in_training
from dspark_core.models import load_target
from dspark_core.paths import dspark_home, write_json_atomic
from dspark_core.recipes.evaluation import EvalConfig, evaluate
from dspark_core.recipes.features import build_cache
from dspark_core.recipes.prompts import prepare_prompts
from dspark_core.recipes.responses import generate_responses
from dspark_core.recipes.training import train
from dspark_core.settings import DEFAULT_DECODE_BLOCK_SIZE
from dspark_core.provenance import provenance
from dspark_core.training.budget import steps_for_budget
from dspark_core.training.trainer import TrainConfig

console = Console(width=160)


@dataclass(frozen=True)
class Preset:
    prompts: int  # self-generated training prompts
    max_new_tokens: int  # response length cap
    regeneration_batch: int
    train_minutes: float  # per drafter
    eval_per_domain: int  # held-out suite prompts per domain
    eval_max_new_tokens: int
    decode_block_size: int | None  # draft tokens verified per round (None: the draft's γ)
    train: dict  # TrainConfig overrides (the default recipe when empty)
    nproc: int | None = None  # train as this many torchrun ranks (`dspark train --nproc`); None: in this process


PRESETS = {
    # 2 CPU cores, about 45 minutes. With the data stages in bfloat16 (a CPU with AMX): ~4 min prompts, ~7 min
    # greedy responses (~180k tokens), ~2 min cache, 5 min of training per drafter, ~10 min of held-out
    # decoding (each run beside its own baseline).
    "cpu": Preset(prompts=1000, max_new_tokens=192, regeneration_batch=128, train_minutes=5.0, eval_per_domain=6,
                  eval_max_new_tokens=64, decode_block_size=DEFAULT_DECODE_BLOCK_SIZE, train={}),
    # One large GPU, a 10-minute window: verification is nearly free there, so drafts decode at their own γ.
    "gpu": Preset(prompts=6000, max_new_tokens=256, regeneration_batch=512, train_minutes=1.5, eval_per_domain=12,
                  eval_max_new_tokens=64, decode_block_size=None, train={"batch_size": 32, "block_size": 7}, nproc=1),
    "smoke": Preset(prompts=16, max_new_tokens=24, regeneration_batch=16, train_minutes=0.15, eval_per_domain=2,
                    eval_max_new_tokens=16, decode_block_size=DEFAULT_DECODE_BLOCK_SIZE, train={}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--dataset", help="dataset name (default: bench-<preset>)")
    parser.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=True,
                        help="regenerate responses greedily (default) or with the model's recommended sampling")
    parser.add_argument("--data-dtype", default="auto", help=DATA_DTYPE_HELP)
    parser.add_argument("--out", help="results JSON (default: benchmarks/results/drafters-<preset>.json)")
    parser.add_argument("--checkpoints-out", help="copy the trained drafts here (e.g. $OUT on a GPU machine)")
    parser.add_argument("--nproc", type=int, help="train each draft as N torchrun ranks (default: the preset's; "
                                                  "gpu: 1, the others: in this process)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    nproc = args.nproc or preset.nproc
    dataset = args.dataset or f"bench-{args.preset}"
    out = Path(args.out or f"benchmarks/results/drafters-{args.preset}.json")

    started = time.perf_counter()
    target = load_target(args.target)
    # the data stages run the target in its data precision (bfloat16 on CUDA and on CPUs with AMX); training
    # and decoding in the default one (float32 on CPU: greedy speculative output equals autoregressive exactly)
    data_target = load_target(args.target, dtype=args.data_dtype, for_data=True)
    throughput: dict[str, dict] = {"model_load_s": {"seconds": time.perf_counter() - started}}
    console.print(f"target {target.spec} on {target.device} ({target.dtype}; data stages {data_target.dtype}), "
                  f"torch threads {torch.get_num_threads()}, home {dspark_home()}, preset {args.preset}")

    def stage(name: str, t0: float, amount: float, unit: str, reused: bool = False) -> None:
        seconds = time.perf_counter() - t0
        throughput[name] = {"seconds": seconds, unit: amount, f"{unit}_per_s": amount / seconds if seconds else None,
                            "reused": reused}
        console.print(f"[bold]{name}[/]: {amount:.0f} {unit} in {seconds:.0f} s "
                      f"({amount / max(seconds, 1e-9):.1f}/s){' (reused)' if reused else ''}; "
                      f"total {(time.perf_counter() - started) / 60:.1f} min")

    # 1-3. data
    t0 = time.perf_counter()
    prompts = prepare_prompts(PromptsConfig(dataset=dataset, source="self", count=preset.prompts, domains=tuple(DOMAIN_OPENINGS),
                                            validation_fraction=0.05), target=lambda loaded=data_target: loaded)
    stage("prompts", t0, sum(prompts.counts.values()), "prompts", prompts.reused)
    t0 = time.perf_counter()
    regeneration = RegenerationConfig(max_new_tokens=preset.max_new_tokens, batch_size=preset.regeneration_batch,
                                      temperature=0.0 if args.greedy else None)
    responses = generate_responses(data_target, dataset, regeneration)
    stage("responses", t0, responses.response_tokens, "tokens", responses.seconds < 1)
    t0 = time.perf_counter()
    cache = build_cache(data_target, dataset, CacheConfig())
    data_dtype_used = str(data_target.dtype)
    del data_target  # training and decoding use `target`
    stage("feature_cache", t0, cache.tokens, "tokens", cache.reused)

    # 4. three drafters, the same training time each
    checkpoints, training = {}, {}
    train_cache = FeatureCache(cache.path, split="train", verify=False)
    for algorithm in ALGORITHMS:
        t0 = time.perf_counter()
        config = TrainConfig(algorithm=algorithm, **preset.train)
        config = replace(config, steps=steps_for_budget(target, train_cache, config, preset.train_minutes * 60))
        if nproc:  # the ranks train; the call below then finds the finished run and reports it
            launch("dspark_cli", train_arguments(args.target, dataset, config), nproc)
        report = train(target, cache.path, config)
        checkpoints[algorithm] = report.checkpoint
        positions = sum(h["positions_per_s"] for h in report.history) / max(1, len(report.history))
        training[algorithm] = {"steps": config.steps, "minutes": (time.perf_counter() - t0) / 60,
                               "positions_per_s": positions, **report.final_metrics}
        stage(f"train_{algorithm}", t0, config.steps, "steps")
        throughput[f"train_{algorithm}"]["positions_per_s"] = positions
    if args.checkpoints_out:
        for algorithm, checkpoint in checkpoints.items():
            shutil.copytree(checkpoint, Path(args.checkpoints_out) / algorithm, dirs_exist_ok=True)

    # 5. held-out suite, greedy, one request at a time (the per-request latency view)
    records = unseen_in_training(suite_records("heldout-v1"), prompts.path)
    per_domain: dict[str, list] = {}
    for record in records:
        per_domain.setdefault(record.source, []).append(record)
    held_out = eval_prompts(target, [r for domain in sorted(per_domain) for r in per_domain[domain][: preset.eval_per_domain]])
    # Each draft at the default decoding block size (short rounds: what pays on a CPU) and at its trained γ.
    config = EvalConfig(benchmark="heldout-v1", max_new_tokens=preset.eval_max_new_tokens,
                        block_size=preset.decode_block_size)
    runs = [("prompt-lookup", PromptLookupDrafter(), config)]
    for algorithm, checkpoint in checkpoints.items():
        runs.append((algorithm, checkpoint, config))
        if config.block_size is not None:
            runs.append((f"{algorithm} γ={TrainConfig(**preset.train).block_size}", checkpoint, replace(config, block_size=None)))
    # Every run decodes its own autoregressive baseline right before it: the machine's speed drifts over the
    # minutes a benchmark takes, and a speed-up is only as good as the baseline measured next to it.
    results = {}
    for name, drafter, run_config in runs:
        t0 = time.perf_counter()
        report = evaluate(target, drafter, held_out, run_config)
        results[name] = {
            "block_size": report.block_size,
            "by_domain": {s.domain: {"tau": s.tau, "speedup": s.speedup, "prompts": s.prompts} for s in report.by_domain()},
            **_summary(report.overall), "identical_to_autoregressive": report.greedy_identical,
        }
        stage(f"eval_{name}", t0, 2 * report.overall.new_tokens, "tokens")  # autoregressive + speculative
        console.print(f"evaluated {name}: τ {report.overall.tau:.2f}, {report.overall.speedup:.2f}x")

    table = Table(title=f"{target.spec} on {target.device}, greedy, {len(held_out)} held-out prompts (built-in suite) "
                        f"× ≤{preset.eval_max_new_tokens} tokens")
    for column in ("drafter", "γ", "τ", "τ math", "τ code", "τ chat", "cond. accept @1..k", "draft ms", "verify ms",
                   "speed-up", "lossless"):
        table.add_column(column, justify="right")
    for name, e in results.items():
        domains = e["by_domain"]
        table.add_row(name, str(e["block_size"]), f"{e['tau']:.2f}", *(f"{domains[d]['tau']:.2f}" if d in domains else "-" for d in ("math", "code", "chat")),
                      " ".join("-" if v is None else f"{v:.2f}" for v in e["cond_accept"]),
                      f"{e['draft_ms_per_round']:.1f}", f"{e['verify_ms_per_round']:.1f}", f"{e['speedup']:.2f}x",
                      "yes" if e["identical_to_autoregressive"] else "NO")
    console.print(table)
    write_json_atomic(out, {
        "command": "python benchmarks/bench_drafters.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)),
        "preset": args.preset, "settings": preset.__dict__, "target": target.spec, "revision": target.revision,
        "device": str(target.device), "dtype": str(target.dtype), "data_dtype": data_dtype_used,
        "greedy_data": args.greedy,
        "data": {"prompts": prompts.counts, "domains": prompts.domains, "response_tokens": responses.response_tokens,
                 "cache_tokens": cache.tokens},
        "training": training, "training_ranks": nproc or 0, "throughput": throughput, "results": results,
        "total_minutes": (time.perf_counter() - started) / 60,
        **provenance(),
    })
    console.print(f"wrote {out}; total {(time.perf_counter() - started) / 60:.1f} min")


#: the `dspark train` flag of each training setting a preset may change
TRAIN_FLAGS = {"algorithm": "--drafter", "steps": "--steps", "batch_size": "--batch-size", "block_size": "--block-size",
               "num_layers": "--num-layers", "learning_rate": "--lr", "anchors_per_sequence": "--anchors"}


def train_arguments(target: str, dataset: str, config: TrainConfig) -> list[str]:
    """`dspark train` arguments for `config` (every setting not listed keeps its default, as in `config`)."""
    default = TrainConfig(algorithm=config.algorithm)
    changed = {name: getattr(config, name) for name in TRAIN_FLAGS if getattr(config, name) != getattr(default, name)}
    unsupported = [f.name for f in fields(TrainConfig) if f.name not in TRAIN_FLAGS
                   and getattr(config, f.name) != getattr(default, f.name)]
    if unsupported:
        raise SystemExit(f"bench_drafters cannot pass {unsupported} to `dspark train` yet; add them to TRAIN_FLAGS")
    arguments = ["train", "--target", target, "--dataset", dataset, "--drafter", config.algorithm]
    for name, value in changed.items():
        if name != "algorithm":
            arguments += [TRAIN_FLAGS[name], str(value)]
    return arguments


def _summary(overall) -> dict:
    return {"tau": overall.tau, "speedup": overall.speedup, "tokens": overall.new_tokens,
            "tokens_per_s": overall.tokens_per_s,
            "autoregressive_tokens_per_s": overall.tokens_per_s / overall.speedup if overall.speedup else None,
            "cond_accept": [rate for rate, _ in overall.cond_accept],
            "draft_ms_per_round": overall.draft_ms_per_round, "verify_ms_per_round": overall.verify_ms_per_round}


if __name__ == "__main__":
    main()
