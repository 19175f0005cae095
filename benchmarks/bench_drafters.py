"""Train DSpark, DFlash and Eagle3 on the same self-distilled data for the packaged SmolLM2 on CPU, then
compare greedy acceptance and wall-clock speed on held-out prompts, in one run. Every stage is the library's
recipe (the same the Dagster assets and the `dspark` command line run).

Steps (each reused if already done under $DSPARK_HOME, so an interrupted run resumes):
  1. self-generated prompts (Magpie) for training, and a disjoint held-out set;
  2. the target's own responses (recommended sampling), 3. the feature cache,
  4. DSpark (Markov head), DFlash and Eagle3, same settings and steps each;
  5. greedy decoding of the held-out prompts with: autoregressive, prompt lookup, untrained DSpark,
     DFlash, Eagle3, DSpark — τ, acceptance, draft/verify ms per round, speed-up over autoregressive.

Usage: python benchmarks/bench_drafters.py [--prompts 160] [--steps 400] [--eval-prompts 16]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import dspark_core
from dspark_core.data.feature_cache import CacheConfig, FeatureCache
from dspark_core.data.prompts import read_prompt_file
from dspark_core.data.regenerate import RegenerationConfig
from dspark_core.data.sources import PromptsConfig
from dspark_core.decoding import PromptLookupDrafter
from dspark_core.drafters.registry import ALGORITHMS, drafter_kind
from dspark_core.models import load_target
from dspark_core.paths import dspark_home, write_json_atomic
from dspark_core.recipes.evaluation import EvalConfig, evaluate, held_out_prompts
from dspark_core.recipes.features import build_cache
from dspark_core.recipes.prompts import prepare_prompts
from dspark_core.recipes.responses import generate_responses
from dspark_core.recipes.training import train
from dspark_core.training.trainer import TrainConfig, build_model

console = Console(width=150)


def stage(name: str, started: float) -> None:
    console.print(f"[bold]{name}[/] done at {(time.perf_counter() - started) / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--dataset", default="bench-selfgen")
    parser.add_argument("--prompts", type=int, default=160)
    parser.add_argument("--max-new-tokens", type=int, default=160, help="response length cap for training data")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-prompts", type=int, default=16)
    parser.add_argument("--eval-max-new-tokens", type=int, default=96)
    parser.add_argument("--draft-vocab", type=int, default=8192)
    parser.add_argument("--out", default="benchmarks/results/drafters.json")
    args = parser.parse_args()

    started = time.perf_counter()
    target = load_target(args.target)
    console.print(f"target {target.spec} on {target.device}, torch threads {torch.get_num_threads()}, home {dspark_home()}")

    # 1. prompts: a training set (with a small validation split) and a disjoint held-out evaluation set.
    prompts = prepare_prompts(PromptsConfig(dataset=args.dataset, source="self", count=args.prompts,
                                            validation_fraction=0.05), target=lambda: target)
    held_out_file = prepare_prompts(PromptsConfig(dataset=f"{args.dataset}-held-out", source="self",
                                                  count=args.eval_prompts * 2, seed=10_007, validation_fraction=1.0),
                                    target=lambda: target).path
    known = {record.id for record, _ in read_prompt_file(prompts.path)}
    eval_set = [p for p in held_out_prompts(target, held_out_file) if p.id not in known][: args.eval_prompts]
    stage(f"prompts ({sum(prompts.counts.values())} train+val, {len(eval_set)} held out)", started)

    # 2-3. responses and feature cache.
    responses = generate_responses(target, args.dataset, RegenerationConfig(max_new_tokens=args.max_new_tokens))
    stage(f"responses ({responses.response_tokens} tokens)", started)
    cache = build_cache(target, args.dataset, CacheConfig())
    stage(f"feature cache ({cache.tokens} tokens, {cache.size_mib:.0f} MiB)", started)

    # 4. train the three drafters on the same data with the same budget.
    checkpoints, training = {}, {}
    for algorithm in ALGORITHMS:
        t0 = time.perf_counter()
        report = train(target, cache.path, TrainConfig(algorithm=algorithm, steps=args.steps,
                                                       draft_vocab_size=args.draft_vocab, log_every=25))
        checkpoints[algorithm] = report.checkpoint
        training[algorithm] = {"minutes": (time.perf_counter() - t0) / 60, **report.final_metrics}
        stage(f"train {algorithm}", started)
    train_minutes = (time.perf_counter() - started) / 60

    # 5. evaluate on the held-out prompts, greedy, one request at a time (the per-request latency view).
    untrained = build_model(target, FeatureCache(cache.path, split="train"),
                            TrainConfig(algorithm="dspark", draft_vocab_size=args.draft_vocab)).eval()
    drafters = {
        "prompt-lookup": PromptLookupDrafter(),
        "dspark (untrained)": drafter_kind("dspark").runtime(untrained, "dspark (untrained)"),
        **{algorithm: checkpoints[algorithm] for algorithm in ("eagle3", "dflash", "dspark")},
    }
    config = EvalConfig(max_new_tokens=args.eval_max_new_tokens)
    results, baseline = {}, None
    for name, drafter in drafters.items():
        report = evaluate(target, drafter, eval_set, config, baseline=baseline)
        baseline, overall = report.baseline, report.overall
        results[name] = {
            "tau": overall.tau, "tokens": overall.new_tokens, "tokens_per_s": overall.tokens_per_s,
            "cond_accept": [rate for rate, _ in overall.cond_accept], "speedup": overall.speedup,
            "draft_ms_per_round": overall.draft_ms_per_round, "verify_ms_per_round": overall.verify_ms_per_round,
            "identical_to_autoregressive": report.greedy_identical,
        }
        console.print(f"evaluated {name}: τ {overall.tau:.2f}")

    table = Table(title=f"{target.spec}, CPU, greedy, {len(eval_set)} held-out prompts × ≤{args.eval_max_new_tokens} tokens")
    for column in ("drafter", "τ", "cond. accept @1..7", "draft ms/round", "verify ms/round", "tok/s", "speed-up", "lossless"):
        table.add_column(column, justify="right")
    for name, e in results.items():
        table.add_row(name, f"{e['tau']:.2f}", " ".join("-" if v is None else f"{v:.2f}" for v in e["cond_accept"]),
                      f"{e['draft_ms_per_round']:.1f}", f"{e['verify_ms_per_round']:.1f}", f"{e['tokens_per_s']:.1f}",
                      f"{e['speedup']:.2f}x", "yes" if e["identical_to_autoregressive"] else "NO")
    console.print(table)
    console.print(f"data + training took {train_minutes:.1f} min; training: " + ", ".join(
        f"{k} {v['minutes']:.1f} min (analytic τ {v.get('expected_tau', float('nan')):.2f})" for k, v in training.items()))
    report = {"target": target.spec, "revision": target.revision, "args": vars(args), "train_minutes": train_minutes,
              "training": training, "results": results, "total_minutes": (time.perf_counter() - started) / 60,
              "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(), "torch": torch.__version__},
              "code_version": dspark_core.__version__}
    write_json_atomic(Path(args.out), report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
