"""Training throughput and loss in float32 against bfloat16 autocast (`dspark train --autocast`), per drafter, the
default recipe, the same data, seed and steps.

Each run is a real `dspark train` command on a dataset's feature cache under --home, into a fresh run directory;
the two precisions go in alternating order over --repeats rounds, so drift in the machine's speed hits both alike.

  positions/s      supervised block positions trained per second, as the trainer logs it; the median of the log
                   windows after the first (warm-up), then the median over repeats
  loss deviation   at every logged step, |loss(bfloat16) − loss(float32)| / loss(float32); the largest over the run
                   (same seed, same batches: the curves differ only by precision)
  held-out τ       the trained draft's greedy acceptance on the dataset's validation split (first repeat)

Usage: python benchmarks/bench_train_precision.py [--home /tmp/dspark-bench-cache-ranks] [--dataset bench-cache-ranks]
       [--target smollm2-135m] [--algorithms dspark,dflash,eagle3] [--steps 100] [--repeats 2]
       [--out benchmarks/results/train-precision-cpu.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from bench_train_ranks import alternating, timed_training, training_arguments, use_home  # noqa: E402

console = Console(width=150)
RESULTS = Path(__file__).parent / "results"
MODES = ("float32", "bfloat16")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    training_arguments(parser, steps=100, out=RESULTS / "train-precision-cpu.json")
    args = parser.parse_args()
    use_home(args)
    from dspark_core.paths import write_json_atomic
    from dspark_core.provenance import provenance
    from dspark_core.recipes.features import find_cache

    cache = find_cache(args.target, args.dataset)  # a clear error when there is none yet
    algorithms = args.algorithms.split(",")
    runs = alternating(algorithms, list(MODES), args.repeats, lambda algorithm, mode, out: _timed_training(
        args, algorithm, mode, out), prefix="bench-train-precision-", key="autocast")
    summary = {}
    for algorithm in algorithms:
        mine = [r for r in runs if r["algorithm"] == algorithm]
        speed = {mode: statistics.median(r["positions_per_s"] for r in mine if r["autocast"] == mode) for mode in MODES}
        curves = {mode: next(r["losses"] for r in mine if r["autocast"] == mode) for mode in MODES}
        deviation = max(abs(b - a) / a for a, b in zip(curves["float32"], curves["bfloat16"]))
        summary[algorithm] = {"positions_per_s": {m: round(v, 1) for m, v in speed.items()},
                              "speedup": round(speed["bfloat16"] / speed["float32"], 3),
                              "max_loss_deviation": round(deviation, 4),
                              "final_loss": {m: round(curves[m][-1], 4) for m in MODES},
                              "val_tau": {m: next(r["val_tau"] for r in mine if r["autocast"] == m) for m in MODES}}
    write_json_atomic(args.out, {
        "benchmark": "bench_train_precision",
        "command": " ".join(["python", "benchmarks/bench_train_precision.py", *sys.argv[1:]]),
        **provenance(), "cpu_cores": os.cpu_count(), "target": args.target, "cache": str(cache),
        "steps": args.steps, "repeats": args.repeats, "results": summary, "runs": runs,
    })
    table = Table(title=f"training, {args.target}, default recipe, {args.steps} steps: float32 vs bfloat16 autocast")
    for column in ("drafter", "float32 positions/s", "bfloat16 positions/s", "speed-up", "max loss deviation",
                   "final loss f32 / bf16", "held-out τ f32 / bf16"):
        table.add_column(column, justify="right")
    for algorithm, row in summary.items():
        table.add_row(algorithm, f"{row['positions_per_s']['float32']:.0f}", f"{row['positions_per_s']['bfloat16']:.0f}",
                      f"{row['speedup']:.2f}x", f"{row['max_loss_deviation']:.2%}",
                      f"{row['final_loss']['float32']:.4f} / {row['final_loss']['bfloat16']:.4f}",
                      " / ".join("–" if row["val_tau"][m] is None else f"{row['val_tau'][m]:.3f}" for m in MODES))
    console.print(table)
    console.print(f"results: {args.out}")
    return 0


def _timed_training(args, algorithm: str, mode: str, out: Path) -> dict:
    return timed_training(args, algorithm, out, ["--autocast", mode])


if __name__ == "__main__":
    sys.exit(main())
