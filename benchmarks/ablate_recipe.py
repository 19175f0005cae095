"""Ablation of the draft training recipe: each lever alone against the baseline, at the same wall-clock budget,
on the same data, judged on the same held-out sequences.

Step 1 times a few training steps of every variant back to back (keep the machine otherwise idle while it
runs) and gives each variant the number of steps that fits the budget; step 2 trains them (timings no longer
matter) and measures greedy held-out acceptance on the validation split of the reference cache
(`dspark_core.training.validation`: the acceptance real greedy decoding would see, without decoding).
Optionally each variant is also decoded for real against autoregressive decoding, on the built-in held-out
suite, at one or several block sizes (a CPU verifies 8 tokens at about twice the cost of one, so the γ that
decodes fastest can be smaller than the one trained).

Usage:
  python benchmarks/ablate_recipe.py --cache DIR [--budget-min 5] [--variants baseline,anchors64,...]
         [--decode 8 --decode-block-sizes 1,2,4 --prompts PROMPTS.jsonl] [--out benchmarks/results/ablation.json]

Variants are TrainConfig overrides (see VARIANTS); `train_cache` trains on another cache (another dataset:
more data, greedy responses) while validation stays on the reference cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dspark_core.data.feature_cache import FeatureCache
from dspark_core.evaluation.speculative import eval_prompts
from dspark_core.evaluation.suites import suite_records, unseen_in_training
from dspark_core.models import load_target
from dspark_core.paths import dspark_home, write_json_atomic
from dspark_core.recipes.evaluation import EvalConfig, evaluate
from dspark_core.training.losses import LossWeights
from dspark_core.training.budget import seconds_per_step
from dspark_core.training.trainer import TrainConfig, train_draft
from dspark_core.provenance import provenance

console = Console(width=160)

VARIANTS: dict[str, dict] = {
    "baseline": {},
    "dflash": {"algorithm": "dflash"},
    # DFlash's two block layouts: the anchor slot drafts the first token, or (vLLM's dflash) only the mask slots do
    "dflash-anchor": {"algorithm": "dflash", "sample_from_anchor": True},
    "dflash-fill-in": {"algorithm": "dflash", "sample_from_anchor": False},
    "eagle3": {"algorithm": "eagle3"},
    "anchors64": {"anchors_per_sequence": 64},
    "anchors256": {"anchors_per_sequence": 256},
    "batch16": {"batch_size": 16},
    "lr2e-3": {"learning_rate": 2e-3},
    "init-target": {"init": "target"},
    "vocab4096": {"draft_vocab_size": 4096},
    "vocab16384": {"draft_vocab_size": 16384},
    "ce-only": {"loss": {"ce": 1.0, "tv": 0.0, "conf": 1.0}},
    "tv-only": {"loss": {"ce": 0.0, "tv": 1.0, "conf": 1.0}},
    "gamma4": {"block_size": 4},
    "layers2": {"num_layers": 2},
    # the architecture vLLM's speculators format expresses exactly, and each of its two parts alone
    "qk-norm": {"qk_norm": True},
    "mask-vocab": {"mask_token": "vocab"},
    "speculators-exact": {"qk_norm": True, "mask_token": "vocab"},
    # the block reads the target's last state directly, as Eagle3's input does (not in the speculators format)
    "anchor-state": {"anchor_state": True},
}


def _config(overrides: dict) -> TrainConfig:
    values = {k: v for k, v in overrides.items() if k != "train_cache"}
    if "loss" in values:
        values["loss"] = LossWeights(**{**LossWeights().__dict__, **values["loss"]})
    return TrainConfig(**{"log_every": 25, "checkpoint_every": 100_000, **values})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--cache", required=True, help="reference feature cache: its train split trains, its "
                                                       "validation split judges every variant")
    parser.add_argument("--prompts", help="the reference dataset's prompts.jsonl: --decode checks that no suite "
                                          "prompt is among them")
    parser.add_argument("--budget-min", type=float, default=5.0, help="training wall-clock budget per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--extra", default="{}", help="JSON {name: overrides} of more variants")
    parser.add_argument("--decode", type=int, default=0, help="decode this many prompts per domain of the built-in "
                                                               "held-out suite with each variant")
    parser.add_argument("--decode-block-sizes", default="", help="comma-separated γ to decode at (default: the "
                                                                  "draft's own)")
    parser.add_argument("--out", default="benchmarks/results/ablation.json")
    args = parser.parse_args()

    variants = {**VARIANTS, **json.loads(args.extra)}
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    target = load_target(args.target)
    reference = FeatureCache(args.cache, target_revision=target.revision, split="train")
    validation = FeatureCache(args.cache, split="validation")
    console.print(f"{target.spec} on {target.device}, {torch.get_num_threads()} threads; reference cache "
                  f"{reference.path} ({len(reference)} train / {len(validation)} validation sequences)")

    caches = {name: FeatureCache(variants[name].get("train_cache", args.cache), split="train") for name in names}
    plan = {}
    for name in names:  # 1. calibration, back to back
        config = _config(variants[name])
        per_step = seconds_per_step(target, caches[name], config)
        plan[name] = (replace(config, steps=max(20, int(args.budget_min * 60 / per_step))), per_step)
        console.print(f"{name}: {per_step:.3f} s/step -> {plan[name][0].steps} steps")

    results, baseline_decoding, held_out = {}, None, []
    if args.decode:
        records = suite_records("heldout-v1")
        if args.prompts:
            records = unseen_in_training(records, Path(args.prompts))
        per_domain: dict[str, list] = {}
        for record in records:
            per_domain.setdefault(record.source, []).append(record)
        held_out = eval_prompts(target, [r for d in sorted(per_domain) for r in per_domain[d][: args.decode]])
    runs = dspark_home() / "ablation"
    for name in names:  # 2. training and judging
        config, per_step = plan[name]
        started = time.perf_counter()
        key = hashlib.sha256(json.dumps([config.to_dict(), str(caches[name].path)], sort_keys=True).encode()).hexdigest()
        result = train_draft(target, caches[name], runs / f"{name}-{key[:10]}", config, validation=validation,
                             progress=False)
        final = result.final_metrics
        entry = {
            "overrides": variants[name], "steps": config.steps, "seconds_per_step": per_step,
            "train_minutes": (time.perf_counter() - started) / 60,
            "positions_per_s": sum(h["positions_per_s"] for h in result.history) / max(1, len(result.history)),
            "train_cache": str(caches[name].path), "train_sequences": len(caches[name]),
            "val_tau": final.get("val_tau"),
            "val_accept": [final.get(f"val_accept_{k}") for k in range(1, config.block_size + 1)],
            "expected_tau_train_batch": final.get("expected_tau"),
        }
        if args.decode:
            decoded = {}
            for gamma in [int(g) for g in args.decode_block_sizes.split(",")] if args.decode_block_sizes else [None]:
                report = evaluate(target, result.checkpoint, held_out, EvalConfig(max_new_tokens=64, block_size=gamma),
                                  baseline=baseline_decoding)
                baseline_decoding = report.baseline
                decoded[report.block_size] = {
                    "tau": report.overall.tau, "speedup": report.overall.speedup,
                    "cond_accept": [r for r, _ in report.overall.cond_accept],
                    "draft_ms_per_round": report.overall.draft_ms_per_round,
                    "verify_ms_per_round": report.overall.verify_ms_per_round,
                    "tau_by_domain": {d.domain: d.tau for d in report.by_domain()},
                    "identical_to_autoregressive": report.greedy_identical}
            best = max(decoded, key=lambda g: decoded[g]["speedup"])
            entry.update(decoded=decoded, decode_block_size=best, decode_tau=decoded[best]["tau"],
                         decode_speedup=decoded[best]["speedup"])
        results[name] = entry
        console.print(f"{name}: val τ {entry['val_tau']:.3f} after {config.steps} steps "
                      f"({entry['positions_per_s']:.0f} positions/s)" +
                      (f"; decoded τ {entry['decode_tau']:.2f}, {entry['decode_speedup']:.2f}x" if "decode_tau" in entry else ""))
        _write(args, target, results)

    table = Table(title=f"recipe ablation: {args.budget_min:g} min of training each, greedy held-out acceptance")
    for column in ("variant", "steps", "positions/s", "val τ", "val accept @1..", "decoded τ", "speed-up"):
        table.add_column(column, justify="right")
    base = results.get("baseline", {}).get("val_tau")
    for name, e in results.items():
        delta = f" ({e['val_tau'] - base:+.3f})" if base and name != "baseline" else ""
        table.add_row(name, str(e["steps"]), f"{e['positions_per_s']:.0f}", f"{e['val_tau']:.3f}{delta}",
                      " ".join("-" if v is None else f"{v:.2f}" for v in e["val_accept"]),
                      f"{e['decode_tau']:.2f}" if "decode_tau" in e else "", f"{e['decode_speedup']:.2f}x" if "decode_tau" in e else "")
    console.print(table)


def _write(args, target, results) -> None:
    write_json_atomic(Path(args.out), {
        "command": "python benchmarks/ablate_recipe.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, "")),
        "target": target.spec, "revision": target.revision, "device": str(target.device), **provenance(),
        "results": results,
    })


if __name__ == "__main__":
    main()
