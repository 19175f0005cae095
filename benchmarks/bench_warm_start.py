"""Warm start on a derived base model, measured: how many training steps a draft of X′ needs when it grows from
X's draft, against the from-scratch draft of X′ at `make run`'s size.

X is the packaged SmolLM2, X′ its 4-bit re-quantization (`dspark models derive --method quantize`), the kind of
update a served base model goes through. The parent is a draft of X trained from scratch at `make run`'s size
(by default the first DSpark draft under $DSPARK_HOME, e.g. the first cycle of bench_continual.py). X′ gets data
of its own the way the pipeline prepares it: the same prompts, answered by X′ (greedy), its features cached at the
parent's layers. Then, on X′'s cache, with the parent's whole training config:

  * from scratch for --steps (the reference: its held-out τ is the bar),
  * the parent as it is (0 steps: what the transfer test measures),
  * grown from the parent for each of --budgets steps (each a complete run with its own warmup and cosine decay,
    as a scheduled retraining of that length would be).

Held-out τ is greedy and teacher-forced on the validation split of X′'s cache (exact for greedy decoding). The
answer: the smallest budget whose τ reaches the from-scratch τ, as a share of --steps (the aim: at most 1/3).

Usage:
  python benchmarks/bench_warm_start.py --home /tmp/continual [--parent DRAFT] [--steps 1200]
         [--budgets 150,300,400,600] [--prompts 160] [--out benchmarks/results/warm-start-derived-cpu.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="$DSPARK_HOME holding X's dataset and drafts")
    parser.add_argument("--model", default="smollm2-135m", help="X")
    parser.add_argument("--parent", type=Path, default=None, help="X's draft (default: the oldest DSpark draft of X "
                                                                  "under the home's checkpoints)")
    parser.add_argument("--name", default="smollm2-135m-q4", help="X′'s name (derived:NAME)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1200, help="the from-scratch run's steps (make run's)")
    parser.add_argument("--budgets", default="150,300,400,600", help="steps of the warm-started runs")
    parser.add_argument("--prompts", type=int, default=160, help="prompts of X's dataset answered by X′ (its first)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/warm-start-derived-cpu.json"))
    args = parser.parse_args(argv)
    os.environ["DSPARK_HOME"] = str(args.home.resolve())  # before anything reads it
    from rich.console import Console

    from dspark_core.data.feature_cache import CacheConfig, FeatureCache
    from dspark_core.data.layout import dataset_dir
    from dspark_core.data.regenerate import RegenerationConfig
    from dspark_core.drafters.checkpoint import load_draft
    from dspark_core.models import load_target
    from dspark_core.models.derive import DeriveConfig, derive_model, derived_dir, derived_spec
    from dspark_core.models.spec import slugify
    from dspark_core.paths import dspark_home, write_json_atomic
    from dspark_core.provenance import provenance
    from dspark_core.recipes.features import build_cache
    from dspark_core.recipes.responses import generate_responses
    from dspark_core.training.trainer import TrainConfig, train_draft
    from dspark_core.training.validation import held_out_acceptance
    from dspark_core.training.warm_start import read_parent

    console = Console(highlight=False)
    started_at, began = provenance(), time.perf_counter()
    slug = slugify(args.model)
    parent_path = args.parent or oldest_draft(dspark_home() / "checkpoints" / slug / "dspark")
    parent = read_parent(parent_path)
    x = load_target(args.model)
    if not (derived_dir(args.name) / "config.json").exists():
        derive_model(x, args.name, DeriveConfig(method="quantize", bits=args.bits), progress=True)
    x_prime = load_target(derived_spec(args.name))
    console.print(f"X {x.spec}, X′ {x_prime.spec}; parent {parent_path} ({parent.training.get('steps_done')} steps)")

    # X′'s data, as the pipeline prepares it: X's first prompts, answered by X′, cached at the parent's layers
    dataset = f"warm-start-{args.name}"
    source = dataset_dir(f"{slug}-default") / "prompts.jsonl"
    prompts = dataset_dir(dataset) / "prompts.jsonl"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    lines = [line for line in source.read_text().splitlines() if line.strip()][: args.prompts]
    if not prompts.exists() or prompts.read_text() != "\n".join(lines) + "\n":
        prompts.write_text("\n".join(lines) + "\n")
    timer = time.perf_counter()
    responses = generate_responses(x_prime, dataset, RegenerationConfig(), progress=True)
    x_cache = FeatureCache(Path(parent.training["cache"]), verify=False)
    cache = build_cache(x_prime, dataset, CacheConfig(layer_ids=tuple(x_cache.layer_ids),
                                                      dtype=x_cache.manifest["dtype"],
                                                      max_length=int(x_cache.manifest["max_length"])), progress=True)
    data_minutes = (time.perf_counter() - timer) / 60
    train_cache = FeatureCache(cache.path, target_revision=x_prime.revision, split="train")
    validation = FeatureCache(cache.path, split="validation")
    console.print(f"X′ data: {responses.conversations} conversations, {len(train_cache)} train / {len(validation)} "
                  f"validation sequences ({data_minutes:.1f} min)")

    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    recipe = {key: value for key, value in parent.training.items() if key in fields and key != "warm_start"}
    runs = []

    def record(kind: str, steps: int, tau: float, accept: list, minutes: float) -> None:
        runs.append({"run": kind, "steps": steps, "val_tau": tau, "val_accept": accept, "train_minutes": minutes})
        console.print(f"{kind:<22} {steps:>5} steps: held-out τ {tau:.3f} ({minutes:.1f} min)")
        write_json_atomic(args.out, report(argv, started_at, args, parent_path, parent, x_prime, responses,
                                           train_cache, validation, data_minutes, runs))

    parent_model, _ = load_draft(parent_path, x_prime, check_target=False)
    measured = held_out_acceptance(parent_model, x_prime, validation).scalars()
    record("parent as it is", 0, measured["val_tau"], _accept(measured), 0.0)
    plan = [("from scratch", args.steps, None)] + [("grown from the parent", int(b), str(parent_path))
                                                    for b in args.budgets.split(",") if b.strip()]
    for kind, steps, warm_start in plan:
        config = TrainConfig(**{**recipe, "steps": steps, "warm_start": warm_start})
        out = dspark_home() / "bench-warm-start" / f"{'warm' if warm_start else 'scratch'}-{steps}"
        timer = time.perf_counter()
        trained = train_draft(x_prime, train_cache, out, config, validation=validation, progress=False)
        record(kind, steps, trained.final_metrics["val_tau"], _accept(trained.final_metrics),
               (time.perf_counter() - timer) / 60)
    result = report(argv, started_at, args, parent_path, parent, x_prime, responses, train_cache, validation,
                    data_minutes, runs)
    write_json_atomic(args.out, result)
    console.print(result["answer"]["summary"])
    console.print(f"total {(time.perf_counter() - began) / 60:.1f} min")
    return 0


def _accept(metrics: dict) -> list:
    positions = [key for key in metrics if key.startswith("val_accept_")]  # val_accept_1, val_accept_2, ...
    return [metrics[key] for key in sorted(positions, key=lambda k: int(k.rsplit("_", 1)[1]))]


def oldest_draft(directory: Path) -> Path:
    drafts = sorted((d / "draft" for d in directory.glob("*") if (d / "draft" / "config.json").exists()),
                    key=lambda d: (d / "config.json").stat().st_mtime)
    if not drafts:
        raise SystemExit(f"no draft under {directory}; give --parent")
    return drafts[0]


def report(argv, started_at, args, parent_path, parent, x_prime, responses, train_cache, validation, data_minutes,
           runs) -> dict:
    scratch = next((r for r in runs if r["run"] == "from scratch"), None)
    grown = sorted((r for r in runs if r["run"] != "from scratch"), key=lambda r: r["steps"])
    reached = next((r for r in grown if scratch and r["val_tau"] >= scratch["val_tau"]), None)
    answer = {"scratch_steps": scratch["steps"] if scratch else None,
              "scratch_tau": scratch["val_tau"] if scratch else None,
              "steps_to_reach_scratch_tau": reached["steps"] if reached else None,
              "share_of_scratch_steps": reached["steps"] / scratch["steps"] if reached and scratch else None}
    if scratch is None:
        answer["summary"] = "from-scratch run not finished"
    elif reached is None:
        answer["summary"] = (f"no warm-started budget reached the from-scratch τ {scratch['val_tau']:.3f} "
                             f"({scratch['steps']} steps)")
    else:
        answer["summary"] = (f"grown from X's draft, X′'s draft reaches the from-scratch τ {scratch['val_tau']:.3f} "
                             f"({scratch['steps']} steps) in {reached['steps']} steps "
                             f"({answer['share_of_scratch_steps']:.2f} of them; τ {reached['val_tau']:.3f})")
    return {
        "command": "python benchmarks/bench_warm_start.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        **started_at, "x": args.model, "x_prime": x_prime.spec, "x_prime_revision": x_prime.revision,
        "derive": {"method": "quantize", "bits": args.bits},
        "parent": {"path": str(parent_path), "steps": parent.training.get("steps_done"),
                   "algorithm": parent.config["algorithm"], "weights_sha256": parent.lineage()["weights_sha256"]},
        "data": {"conversations": responses.conversations, "train_sequences": len(train_cache),
                 "validation_sequences": len(validation), "minutes": data_minutes},
        "runs": runs, "answer": answer,
    }


if __name__ == "__main__":
    raise SystemExit(main())
