"""Train DSpark, DFlash and Eagle3 on the same self-distilled data for the packaged SmolLM2 on CPU, then
compare greedy acceptance and wall-clock speed on held-out prompts, in one run.

Steps (each reused if already done under $DSPARK_HOME, so an interrupted run resumes):
  1. self-generated prompts (Magpie) for training, and a disjoint held-out set;
  2. the target's own responses (recommended sampling), 3. the feature cache (5 layers),
  4. DSpark (Markov head), DFlash and Eagle3 (low/mid/high of the cached layers), same steps each;
  5. greedy decoding of the held-out prompts with: autoregressive, prompt lookup, untrained DSpark,
     DFlash, Eagle3, DSpark — τ, acceptance, draft/verify ms per round, speed-up over autoregressive.

Usage: python benchmarks/bench_drafters.py [--prompts 160] [--steps 400] [--eval-prompts 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dspark_core.data import layout
from dspark_core.data.feature_cache import CacheConfig, FeatureCache, build_feature_cache, default_layer_ids
from dspark_core.data.prompts import deduplicate, read_prompt_file, write_prompts
from dspark_core.data.regenerate import RegenerationConfig, read_responses, regenerate_responses
from dspark_core.data.selfgen import SelfGenerationConfig, self_generated_prompts
from dspark_core.decoding import PromptLookupDrafter
from dspark_core.evaluation.speculative import EvalSettings, decode_prompts, eval_prompts, mismatched_prompts, summarize
from dspark_core.drafters.runtime import DSparkDrafter, drafter_from_checkpoint
from dspark_core.models import load_target
from dspark_core.paths import dspark_home, write_json_atomic
from dspark_core.training.trainer import TrainConfig, build_model, train_draft

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

    # 1. prompts: training set (with a small validation split) and a disjoint held-out evaluation set.
    prompts_file = layout.prompts_path(args.dataset)
    if not prompts_file.exists():
        records = self_generated_prompts(target, SelfGenerationConfig(count=args.prompts, seed=0, batch_size=16))
        write_prompts(records, prompts_file, validation_fraction=0.05)
    train_pairs = read_prompt_file(prompts_file)
    held_out_file = layout.dataset_dir(args.dataset) / "held_out.jsonl"
    if not held_out_file.exists():
        known = {r.id for r, _ in train_pairs}
        extra = self_generated_prompts(target, SelfGenerationConfig(count=args.eval_prompts * 2, seed=10_007, batch_size=16))
        held = [r for r in deduplicate(extra) if r.id not in known][: args.eval_prompts]
        write_prompts(held, held_out_file, validation_fraction=0.0)
    held_out = [r for r, _ in read_prompt_file(held_out_file)]
    stage(f"prompts ({len(train_pairs)} train+val, {len(held_out)} held out)", started)

    # 2-3. responses and feature cache.
    responses = layout.responses_dir(args.dataset, target.spec)
    manifest = regenerate_responses(target, train_pairs, responses,
                                    RegenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=16))
    stage(f"responses ({manifest['response_tokens']} tokens)", started)
    layers = default_layer_ids(target.num_layers)
    cache_path = layout.cache_dir(args.dataset, target.spec, layers, "bfloat16")
    build_feature_cache(target, read_responses(responses)[1], cache_path, CacheConfig(layer_ids=layers))
    cache = FeatureCache(cache_path, target_revision=target.revision, split="train")
    stage(f"feature cache ({cache.manifest['num_tokens']} tokens, {cache.manifest['bytes'] / 2**20:.0f} MiB)", started)

    # 4. train the three drafters on the same data with the same budget.
    runs = dspark_home() / "bench" / args.dataset
    checkpoints, training = {}, {}
    for algorithm in ("dspark", "dflash", "eagle3"):
        t0 = time.perf_counter()
        config = TrainConfig(algorithm=algorithm, steps=args.steps, draft_vocab_size=args.draft_vocab,
                             checkpoint_every=50, log_every=25)
        result = train_draft(target, cache, runs / algorithm, config)
        checkpoints[algorithm] = result.checkpoint
        training[algorithm] = {"minutes": (time.perf_counter() - t0) / 60, **result.final_metrics}
        stage(f"train {algorithm}", started)
    train_minutes = (time.perf_counter() - started) / 60

    # 5. evaluate on held-out prompts, greedy, one request at a time (per-request latency view).
    untrained = build_model(target, cache, TrainConfig(algorithm="dspark", draft_vocab_size=args.draft_vocab)).eval()
    drafters = {
        "autoregressive": None,
        "prompt-lookup": PromptLookupDrafter(),
        "dspark (untrained)": DSparkDrafter(untrained),
        "eagle3": drafter_from_checkpoint(checkpoints["eagle3"], target),
        "dflash": drafter_from_checkpoint(checkpoints["dflash"], target),
        "dspark": drafter_from_checkpoint(checkpoints["dspark"], target),
    }
    prompts = eval_prompts(target, held_out)
    settings = EvalSettings(max_new_tokens=args.eval_max_new_tokens)
    results, baseline = {}, None
    for name, drafter in drafters.items():
        decoded = decode_prompts(target, drafter, prompts, settings, desc=name, progress=False)
        baseline = baseline or decoded
        overall = summarize(decoded, baseline, settings.block_size)[0]
        results[name] = {
            "tau": overall.tau, "tokens": overall.new_tokens, "tokens_per_s": overall.tokens_per_s,
            "cond_accept": [rate for rate, _ in overall.cond_accept], "speedup": overall.speedup,
            "draft_ms_per_round": overall.draft_ms_per_round, "verify_ms_per_round": overall.verify_ms_per_round,
            "identical_to_autoregressive": not mismatched_prompts(decoded, baseline),
        }
        console.print(f"evaluated {name}: τ {results[name]['tau']:.2f}")

    table = Table(title=f"{target.spec}, CPU, greedy, {len(prompts)} held-out prompts × ≤{args.eval_max_new_tokens} tokens")
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
              "training": training, "results": results,
              "total_minutes": (time.perf_counter() - started) / 60}
    write_json_atomic(Path(args.out), report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
