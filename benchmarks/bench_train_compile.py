"""Training throughput and loss with the draft's forward and loss compiled (`dspark train --compile`) against eager,
in float32 and under bfloat16 autocast, per drafter: the default recipe, the same data, seed and steps.

Each run is a real `dspark train` command on a dataset's feature cache under --home, into a fresh run directory;
the modes go in alternating order over --repeats rounds, so drift in the machine's speed hits all alike. Every
compiled run starts from an empty inductor cache (its own TORCHINDUCTOR_CACHE_DIR): it pays the whole compilation,
as a first run on a machine does.

  positions/s      supervised block positions trained per second, as the trainer logs it; the median of the log
                   windows after the first (the first holds the compilation), then the median over repeats
  speed-up         positions/s over the first mode's (float32, eager)
  loss deviation   at every logged step, |loss(mode) − loss(first mode)| / loss(first mode); the largest over the run
                   (same seed, same batches)
  command s        the whole `dspark train` command, model loading, compilation and validation included: what
                   compilation costs before it pays back, at these steps
  held-out τ       the trained draft's greedy acceptance on the dataset's validation split (first repeat)

Usage: python benchmarks/bench_train_compile.py [--home /tmp/dspark-bench-cache-ranks] [--dataset bench-cache-ranks]
       [--target smollm2-135m] [--algorithms dspark,dflash,eagle3] [--modes float32,bfloat16,float32+compile,
       bfloat16+compile] [--steps 200] [--repeats 2] [--out benchmarks/results/train-compile-cpu.json]
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

console = Console(width=160)
RESULTS = Path(__file__).parent / "results"
MODES = ("float32", "bfloat16", "float32+compile", "bfloat16+compile")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    training_arguments(parser, steps=200, out=RESULTS / "train-compile-cpu.json")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated '<autocast>[+compile]'; the first is the baseline")
    args = parser.parse_args()
    use_home(args)
    from dspark_core.paths import write_json_atomic
    from dspark_core.provenance import provenance
    from dspark_core.recipes.features import find_cache

    cache = find_cache(args.target, args.dataset)  # a clear error when there is none yet
    started_at = provenance()  # the code the runs ran, not what was committed while they ran
    algorithms, modes = args.algorithms.split(","), args.modes.split(",")
    for mode in modes:
        if mode.split("+")[0] not in ("float32", "bfloat16") or mode.count("+") > 1 or \
                ("+" in mode and not mode.endswith("+compile")):
            parser.error(f"mode {mode!r}: write '<float32|bfloat16>[+compile]'")
    runs = alternating(algorithms, modes, args.repeats, lambda algorithm, mode, out: _timed_training(
        args, algorithm, mode, out, out.parent / f"inductor-{out.name}"), prefix="bench-train-compile-")
    summary = {}
    for algorithm in algorithms:
        mine = [r for r in runs if r["algorithm"] == algorithm]
        speed = {mode: statistics.median(r["positions_per_s"] for r in mine if r["mode"] == mode) for mode in modes}
        seconds = {mode: statistics.median(r["launch_s"] for r in mine if r["mode"] == mode) for mode in modes}
        curves = {mode: next(r["losses"] for r in mine if r["mode"] == mode) for mode in modes}
        base = modes[0]
        summary[algorithm] = {
            "positions_per_s": {m: round(v, 1) for m, v in speed.items()},
            "speedup": {m: round(speed[m] / speed[base], 3) for m in modes},
            "max_loss_deviation": {m: round(max(abs(b - a) / a for a, b in zip(curves[base], curves[m])), 6)
                                   for m in modes},
            "command_s": {m: round(v, 1) for m, v in seconds.items()},
            "final_loss": {m: round(curves[m][-1], 4) for m in modes},
            "val_tau": {m: next(r["val_tau"] for r in mine if r["mode"] == m) for m in modes},
        }
    write_json_atomic(args.out, {
        "benchmark": "bench_train_compile",
        "command": " ".join(["python", "benchmarks/bench_train_compile.py", *sys.argv[1:]]),
        **started_at, "cpu_cores": os.cpu_count(), "target": args.target, "cache": str(cache),
        "steps": args.steps, "repeats": args.repeats, "modes": modes, "results": summary, "runs": runs,
    })
    table = Table(title=f"training, {args.target}, default recipe, {args.steps} steps: eager vs compiled")
    for column in ("drafter", "mode", "positions/s", "speed-up", "max loss deviation", "command s", "final loss",
                   "held-out τ"):
        table.add_column(column, justify="right")
    for algorithm, row in summary.items():
        for mode in modes:
            tau = row["val_tau"][mode]
            table.add_row(algorithm, mode, f"{row['positions_per_s'][mode]:.0f}", f"{row['speedup'][mode]:.2f}x",
                          f"{row['max_loss_deviation'][mode]:.4%}", f"{row['command_s'][mode]:.0f}",
                          f"{row['final_loss'][mode]:.4f}", "–" if tau is None else f"{tau:.3f}")
    console.print(table)
    console.print(f"results: {args.out}")
    return 0


def _timed_training(args, algorithm: str, mode: str, out: Path, inductor_cache: Path) -> dict:
    autocast, _, compiled = mode.partition("+")
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache)  # empty: the run compiles from nothing
    try:
        return timed_training(args, algorithm, out, ["--autocast", autocast, *(["--compile"] if compiled else [])])
    finally:
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


if __name__ == "__main__":
    sys.exit(main())
