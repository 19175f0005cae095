"""From our CPU recipe to the reference's (DeepSpec's), one difference at a time, for DSpark, DFlash and Eagle3 on
the same data: a ladder whose rungs are `dspark_core.training.presets.LADDER` (no hidden-state regression, the
reference's AdamW, the full vocabulary, its target layers, blocks of 7, 512 anchors (Eagle3: every position),
Eagle3's soft cross-entropy, depth 5), each rung keeping the ones below it; the last rung is the `reference`
preset.

Every run trains the same number of steps (--steps) on the train split of --cache, or, with --budget-min, as many
steps as fit that wall-clock (timed back to back first, as `ablate_recipe.py` does). Each is judged on the cache's
validation split: greedy held-out τ and conditional acceptance per position (teacher-forced, exact for greedy
decoding). With --decode N, N prompts per domain of the built-in heldout-v1 suite are also decoded for real, greedy
and at temperature 1 (the lossless sampler: output distributed as the target's), for τ and the draft's cost per
round. --depths runs DSpark at the reference recipe with each depth, and compares its draft cost per round with
Eagle3's γ sequential passes (the reference rung of the Eagle3 ladder): τ at equal draft cost.

A rung that trains what the rung below it trained (the same layers once resolved against the cache, the same
sequence length once cut to the cache's) is not run again.

Usage:
  python benchmarks/ladder_recipe.py --cache DIR [--drafters dspark,dflash,eagle3] [--steps 300 | --budget-min 4]
         [--vocab 4096] [--rungs cpu,no-regression,...] [--decode 2] [--depths 1,2,3,4,5] [--out benchmarks/results/ladder.json]
  python benchmarks/ladder_recipe.py --draft-cost FILE [--repeats 5]    (time every draft of FILE again, alone)
  python benchmarks/ladder_recipe.py --decode-again FILE --decode 2     (decode every draft of FILE, greedy and T=1)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dspark_core.data.feature_cache import FeatureCache
from dspark_core.evaluation.speculative import eval_prompts
from dspark_core.evaluation.suites import load_suite
from dspark_core.models import load_target
from dspark_core.paths import dspark_home, write_json_atomic
from dspark_core.provenance import provenance
from dspark_core.recipes.evaluation import EvalConfig, evaluate
from dspark_core.training.budget import seconds_per_step
from dspark_core.training.presets import apply_preset, ladder, train_config
from dspark_core.training.trainer import TrainConfig, model_layer_ids, same_settings, settings_identity, train_draft

console = Console(width=170)


def config_of(settings: dict) -> TrainConfig:
    return train_config({"log_every": 25, "checkpoint_every": 100_000, **settings})


def effective(config: TrainConfig, cache: FeatureCache) -> str:
    """What a run trains, as a key: layers resolved against the cache, the length cut to the cache's; settings added
    to the trainer later, at the value runs trained with before them, leave it unchanged."""
    settings = settings_identity(config)
    settings["layer_ids"] = list(model_layer_ids(cache, config))
    settings["max_length"] = min(config.max_length, int(cache.manifest.get("max_length") or config.max_length))
    return json.dumps(settings, sort_keys=True)


def runs_to_make(target, cache: FeatureCache, drafters: list[str], given: dict, depths: list[int]) -> list[dict]:
    """(drafter, rung, settings) of every run, in order; rungs that would repeat the one below them are dropped."""
    runs = []
    for drafter in drafters:
        previous = None
        for rung, settings in ladder(drafter, target.num_layers, target.vocab_size, given):
            key = effective(config_of(settings), cache)
            if key != previous:
                runs.append({"drafter": drafter, "rung": rung, "settings": settings})
            previous = key
    for depth in depths if "dspark" in drafters else []:
        settings = apply_preset("reference", "dspark", target.num_layers, target.vocab_size,
                                {**given, "algorithm": "dspark", "num_layers": depth})
        runs.append({"drafter": "dspark", "rung": f"reference-depth-{depth}", "settings": settings})
    return runs


def decode(target, checkpoint: Path, prompts, temperature: float, baselines: dict) -> dict:
    report = evaluate(target, checkpoint, prompts, EvalConfig(max_new_tokens=64, temperature=temperature,
                                                              block_size=None), baseline=baselines.get(temperature))
    baselines[temperature] = report.baseline
    return {"tau": report.overall.tau, "speedup": report.overall.speedup,
            "cond_accept": [rate for rate, _ in report.overall.cond_accept],
            "draft_ms_per_round": report.overall.draft_ms_per_round,
            "verify_ms_per_round": report.overall.verify_ms_per_round, "lossless": report.greedy_identical}


def heldout_prompts(target, per_domain: int):
    """`per_domain` prompts of each of the built-in heldout-v1 suite's three domains, as the target reads them."""
    return eval_prompts(target, load_suite("heldout-v1").selected(per_domain * 3).records)


def decode_both(target, checkpoint: Path, prompts, baselines: dict) -> dict:
    """A draft's decoding of `prompts`, greedy and at temperature 1: the entry's `greedy` and `sampled`."""
    return {"greedy": decode(target, checkpoint, prompts, 0.0, baselines),
            "sampled": decode(target, checkpoint, prompts, 1.0, baselines)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--cache", help="feature cache: its train split trains, its validation split judges every "
                                        "run (not needed with --draft-cost: the results file names it)")
    parser.add_argument("--drafters", default="dspark,dflash,eagle3")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of every run (equal steps)")
    parser.add_argument("--budget-min", type=float, default=None,
                        help="instead: the steps that fit this many minutes of training, per run (equal wall-clock)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=None,
                        help="draft vocabulary of every rung (the full-vocab rung is then not run): on a CPU the "
                             "full vocabulary makes each step 5-9x slower")
    parser.add_argument("--decode", type=int, default=0, help="heldout-v1 prompts per domain decoded with each draft, "
                                                               "greedy and at temperature 1")
    parser.add_argument("--rungs", default="", help="run only these rungs (comma-separated names; default: all)")
    parser.add_argument("--depths", default="", help="DSpark depths to run at the reference recipe, e.g. 1,2,3,4,5")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ladder.json"))
    parser.add_argument("--draft-cost", type=Path, default=None, help="instead of training: time the draft round of "
                        "every run in this results file again, all drafts back to back on the same prompts (what "
                        "a quiet machine says; timings taken while training ran beside them are noisy), and write "
                        "them into it")
    parser.add_argument("--repeats", type=int, default=5, help="with --draft-cost: rounds of timing per draft")
    parser.add_argument("--decode-again", type=Path, default=None, help="instead of training: decode --decode "
                        "prompts per domain with every draft of this results file, greedy and at temperature 1, and "
                        "write the decoded τ into it (for a ladder run without --decode, or with too few prompts)")
    args = parser.parse_args(argv)
    if args.draft_cost:
        return remeasure_draft_cost(args.draft_cost, args.target, args.repeats)
    if args.decode_again:
        if not args.decode:
            parser.error("--decode-again needs --decode N (prompts per domain of heldout-v1)")
        return decode_again(args.decode_again, args.target, args.decode)
    if not args.cache:
        parser.error("--cache is required (the feature cache the ladder trains on and judges with)")

    target = load_target(args.target)
    train_cache = FeatureCache(args.cache, target_revision=target.revision, split="train")
    validation = FeatureCache(args.cache, split="validation")
    drafters = [d.strip() for d in args.drafters.split(",") if d.strip()]
    given = {"steps": args.steps, "batch_size": args.batch_size,
             **({"draft_vocab_size": args.vocab} if args.vocab else {})}
    plan = runs_to_make(target, train_cache, drafters, given, [int(d) for d in args.depths.split(",") if d.strip()])
    if args.rungs:  # the ladder is still climbed whole (what each rung keeps of the ones below), only fewer are run
        wanted = {r.strip() for r in args.rungs.split(",")}
        plan = [run for run in plan if run["rung"] in wanted or run["rung"].startswith("reference-depth-")]
    console.print(f"{target.spec} on {target.device}, {torch.get_num_threads()} threads; {len(train_cache)} train / "
                  f"{len(validation)} validation sequences; {len(plan)} runs")
    if args.budget_min:  # equal wall-clock: time every run's step back to back, then give each its share
        for run in plan:
            per_step = seconds_per_step(target, train_cache, config_of(run["settings"]))
            run["settings"] = {**run["settings"], "steps": max(10, int(args.budget_min * 60 / per_step))}
            console.print(f"{run['drafter']} {run['rung']}: {per_step:.3f} s/step -> {run['settings']['steps']} steps")
    prompts = heldout_prompts(target, args.decode) if args.decode else []
    baselines: dict = {}
    results, started_at = [], provenance()  # the code the runs ran, not what was committed while they ran
    for run in plan:
        config = config_of(run["settings"])
        key = hashlib.sha256(effective(config, train_cache).encode() + str(train_cache.path).encode()).hexdigest()[:10]
        started = time.perf_counter()
        trained = train_draft(target, train_cache, dspark_home() / "ladder" / f"{run['drafter']}-{run['rung']}-{key}",
                              config, validation=validation, progress=False)
        final = trained.final_metrics
        entry = {**run, "draft": str(trained.checkpoint), "steps": config.steps, "train_minutes": (time.perf_counter() - started) / 60,
                 "val_tau": final.get("val_tau"),
                 "val_accept": [final.get(f"val_accept_{k}") for k in range(1, config.block_size + 1)]}
        if prompts:
            entry.update(decode_both(target, trained.checkpoint, prompts, baselines))
        results.append(entry)
        console.print(f"{run['drafter']:<7} {run['rung']:<20} val τ {entry['val_tau']:.3f} "
                      f"({entry['train_minutes']:.1f} min, {config.steps} steps)" +
                      (f"; decoded τ greedy {entry['greedy']['tau']:.2f}, T=1 {entry['sampled']['tau']:.2f}, draft "
                       f"{entry['greedy']['draft_ms_per_round']:.1f} ms/round" if prompts else ""), highlight=False)
        write_json_atomic(args.out, report(argv, target, train_cache, validation, results, started_at))
    print_table(results)
    return 0


def checkpoint_of(entry: dict, cache_path: str) -> Path:
    """Where a results entry's run wrote its draft: recorded in the entry (files written since it was), else the
    newest run directory of that drafter and rung whose draft was trained with the entry's settings on the same
    cache (directory keys of older files were computed from the trainer's settings of the day)."""
    if entry.get("draft") and (Path(entry["draft"]) / "config.json").exists():
        return Path(entry["draft"])
    config = config_of(entry["settings"])
    matching = []
    for run_dir in (dspark_home() / "ladder").glob(f"{entry['drafter']}-{entry['rung']}-*"):
        saved = run_dir / "draft" / "config.json"
        if saved.exists():
            training = json.loads(saved.read_text()).get("training", {})
            if training.get("cache") == str(cache_path) and same_settings(training, config):
                matching.append(run_dir / "draft")
    if not matching:
        raise SystemExit(f"no draft of {entry['drafter']} at rung {entry['rung']} trained on {cache_path} with the "
                         f"settings the results file records under {dspark_home() / 'ladder'}; run --draft-cost with "
                         f"the DSPARK_HOME the ladder trained in")
    return max(matching, key=lambda draft: (draft / "config.json").stat().st_mtime)


def remeasure_draft_cost(path: Path, target_spec: str, repeats: int) -> int:
    """Every draft of a ladder results file decodes the same held-out prompts greedily, one request at a time as
    evaluation does, `repeats` times in turn (so that a slower spell of the machine falls on all of them); the
    median over repeats of each draft's ms per round (all its rounds of a repeat) is written beside its entry
    (`quiet_draft_ms_per_round`, each repeat's in `quiet_draft_ms_runs`), with the equal-draft-cost table redone."""
    from dspark_core.decoding import GenerationConfig, SpeculativeEngine
    from dspark_core.drafters.checkpoint import load_drafter

    saved = json.loads(path.read_text())
    target = load_target(target_spec)
    prompts = [prompt.ids for prompt in heldout_prompts(target, 2)]
    drafters = [load_drafter(checkpoint_of(entry, saved["cache"]), target) for entry in saved["results"]]
    timings: list[list[float]] = [[] for _ in drafters]
    config = GenerationConfig(max_new_tokens=64)  # as the ladder's own decoding (`decode`)
    for _ in range(repeats):
        for drafter, times in zip(drafters, timings):
            engine = SpeculativeEngine(target, drafter)
            stats = [engine.generate([prompt], config).stats for prompt in prompts]
            rounds = sum(s.batch_rounds for s in stats)
            times.append(sum(s.draft_ms_per_round * s.batch_rounds for s in stats) / max(1, rounds))
    for entry, times in zip(saved["results"], timings):
        entry["quiet_draft_ms_per_round"] = sorted(times)[len(times) // 2]
        entry["quiet_draft_ms_runs"] = [round(t, 3) for t in times]
        console.print(f"{entry['drafter']:<7} {entry['rung']:<20} {entry['quiet_draft_ms_per_round']:.1f} ms/round "
                      f"(γ {entry['settings'].get('block_size', 4)}; {', '.join(f'{t:.1f}' for t in times)})",
                      highlight=False)
    saved["draft_cost_command"] = "python benchmarks/ladder_recipe.py " + shlex.join(sys.argv[1:])
    saved["draft_cost_machine"] = provenance()["machine"]
    saved["equal_draft_cost"] = equal_draft_cost(saved["results"])
    write_json_atomic(path, saved)
    return 0


def decode_again(path: Path, target_spec: str, per_domain: int) -> int:
    """Every draft of a ladder results file decodes the same `per_domain` prompts per domain of heldout-v1, greedy
    and at temperature 1 (as --decode does while training); the decoded τ, acceptance and costs replace the entry's
    `greedy` and `sampled`, the file is rewritten after each draft (a stopped run keeps what it decoded)."""
    saved = json.loads(path.read_text())
    target = load_target(target_spec)
    prompts = heldout_prompts(target, per_domain)
    baselines: dict = {}
    saved["decode_command"] = "python benchmarks/ladder_recipe.py " + shlex.join(sys.argv[1:])
    saved["decode_provenance"] = provenance()
    saved["decoded_prompts"] = len(prompts)
    for entry in saved["results"]:
        entry.update(decode_both(target, checkpoint_of(entry, saved["cache"]), prompts, baselines))
        console.print(f"{entry['drafter']:<7} {entry['rung']:<20} decoded τ greedy {entry['greedy']['tau']:.2f}, "
                      f"T=1 {entry['sampled']['tau']:.2f} ({len(prompts)} prompts; lossless: "
                      f"{entry['greedy']['lossless']})", highlight=False)
        saved["equal_draft_cost"] = equal_draft_cost(saved["results"])
        write_json_atomic(path, saved)
    return 0


#: rungs at which DSpark and DFlash train the reference recipe but for depth (the rungs after `anchors` change
#: nothing for them but the depth), and `--depths` runs
AT_REFERENCE_BUT_DEPTH = ("anchors", "losses", "depth-5")


def draft_ms(entry: dict) -> float | None:
    """A run's draft ms per round: timed on a quiet machine when it was (`--draft-cost`), else while decoding."""
    if "quiet_draft_ms_per_round" in entry:
        return entry["quiet_draft_ms_per_round"]
    return entry["greedy"]["draft_ms_per_round"] if "greedy" in entry else None


def equal_draft_cost(results: list[dict]) -> list[dict]:
    """DSpark (and DFlash) at each depth of the reference recipe against Eagle3's reference rung: draft ms per
    round, the ratio, and the τ of each (greedy held-out, and decoded when it was)."""
    eagle3 = next((r for r in results if r["drafter"] == "eagle3" and r["rung"] == "soft-ce"), None)
    if eagle3 is None or draft_ms(eagle3) is None:
        return []
    rows = []
    for r in results:
        at_reference = r["rung"] in AT_REFERENCE_BUT_DEPTH or r["rung"].startswith("reference-depth-")
        if r["drafter"] in ("dspark", "dflash") and at_reference and draft_ms(r) is not None:
            rows.append({"drafter": r["drafter"], "depth": int(r["settings"].get("num_layers", 1)),
                         "draft_ms_per_round": draft_ms(r), "eagle3_draft_ms_per_round": draft_ms(eagle3),
                         "cost_ratio": draft_ms(r) / draft_ms(eagle3),
                         "val_tau": r["val_tau"], "eagle3_val_tau": eagle3["val_tau"],
                         "decoded_tau": r.get("greedy", {}).get("tau"),
                         "eagle3_decoded_tau": eagle3.get("greedy", {}).get("tau")})
    return sorted(rows, key=lambda row: (row["drafter"], row["depth"]))


def report(argv, target, train_cache, validation, results, source: dict) -> dict:
    """The results file; `source` is the code's provenance when the runs started (the commit they ran)."""
    arguments = sys.argv[1:] if argv is None else argv
    return {"command": "python benchmarks/ladder_recipe.py " + shlex.join(arguments), **source,
            "target": target.spec, "revision": target.revision,
            "device": str(target.device), "cache": str(train_cache.path), "train_sequences": len(train_cache),
            "validation_sequences": len(validation), "results": results,
            "equal_draft_cost": equal_draft_cost(results)}


def print_table(results: list[dict]) -> None:
    table = Table(title="from the cpu recipe to the reference's, one difference at a time (held-out, greedy)")
    for column in ("drafter", "rung", "steps", "minutes", "val τ", "accept @1..γ", "decoded τ", "τ at T=1",
                   "draft ms/round"):
        table.add_column(column, justify="left" if column in ("drafter", "rung") else "right")
    for r in results:
        table.add_row(r["drafter"], r["rung"], str(r["steps"]), f"{r['train_minutes']:.1f}", f"{r['val_tau']:.3f}",
                      " ".join("-" if a is None else f"{a:.2f}" for a in r["val_accept"]),
                      f"{r['greedy']['tau']:.2f}" if "greedy" in r else "",
                      f"{r['sampled']['tau']:.2f}" if "sampled" in r else "",
                      f"{draft_ms(r):.1f}" if draft_ms(r) is not None else "")
    console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())
