"""Training throughput with 1 and with N ranks at the same global batch (torchrun: gloo on a CPU, NCCL with one GPU
per rank), per drafter algorithm.

Each run is a real `dspark train` command (`--nproc N` for N ranks; one rank: no torchrun) on a dataset's feature
cache under --home, into a fresh run directory, for --steps steps of the default recipe (global batch 4). Runs go
in alternating order over --repeats rounds, so drift in the machine's speed hits every rank count alike.

  positions/s  supervised block positions trained per second, as the trainer logs it (over every rank, each
               log window's positions / its wall time); the median of the windows after the first (warm-up)
  launch_s     the whole command: process start, imports, the model load, training, the final save

On a CPU the ranks share its cores (each rank gets cores / N threads), so there the ratio shows what splitting a
step costs, not a scale-out; on GPUs each rank has its own device.

Usage: python benchmarks/bench_train_ranks.py [--home /tmp/dspark-bench-cache-ranks] [--dataset bench-cache-ranks]
       [--target smollm2-135m] [--ranks 1,2] [--steps 60] [--repeats 2] [--out benchmarks/results/train-ranks-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(width=150)
RESULTS = Path(__file__).parent / "results"
ALGORITHMS = ("dspark", "dflash", "eagle3")


def training_arguments(parser: argparse.ArgumentParser, steps: int, out: Path) -> None:
    """The options every training benchmark takes: where the cache is, what to train, how often, where to write."""
    parser.add_argument("--home", type=Path, default=Path("/tmp/dspark-bench-cache-ranks"),
                        help="$DSPARK_HOME holding the dataset's feature cache (bench_cache_ranks.py builds one)")
    parser.add_argument("--dataset", default="bench-cache-ranks")
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=out)


def use_home(args) -> None:
    os.environ["DSPARK_HOME"] = str(args.home)  # before dspark_core reads it; the commands inherit it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    training_arguments(parser, steps=60, out=RESULTS / "train-ranks-cpu.json")
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts to compare")
    args = parser.parse_args()
    use_home(args)
    from dspark_core.paths import write_json_atomic
    from dspark_core.provenance import provenance
    from dspark_core.recipes.features import find_cache

    cache = find_cache(args.target, args.dataset)  # a clear error when there is none yet
    ranks = [int(n) for n in args.ranks.split(",")]
    runs = alternating(args.algorithms.split(","), ranks, args.repeats, lambda algorithm, count, out: _timed_training(
        args, algorithm, count, out), prefix="bench-train-ranks-", key="ranks")
    summary = {}
    for algorithm in args.algorithms.split(","):
        rows = {str(count): statistics.median(r["positions_per_s"] for r in runs
                                              if r["algorithm"] == algorithm and r["ranks"] == count) for count in ranks}
        summary[algorithm] = {"positions_per_s": {k: round(v, 1) for k, v in rows.items()},
                              "ratios": {f"{count}_over_{ranks[0]}": round(rows[str(count)] / rows[str(ranks[0])], 3)
                                         for count in ranks[1:]}}
    write_json_atomic(args.out, {
        "benchmark": "bench_train_ranks",
        "command": " ".join(["python", "benchmarks/bench_train_ranks.py", *sys.argv[1:]]),
        **provenance(), "cpu_cores": os.cpu_count(), "target": args.target, "cache": str(cache),
        "cache_samples": json.loads((cache / "manifest.json").read_text())["num_samples"],
        "steps": args.steps, "global_batch": 4, "results": summary, "runs": runs,
    })
    table = Table(title=f"training positions/s, {args.target}, global batch 4, {args.steps} steps")
    for column in ("drafter", *(f"{n} rank(s)" for n in ranks), *(f"{n} / {ranks[0]}" for n in ranks[1:])):
        table.add_column(column, justify="right")
    for algorithm, row in summary.items():
        table.add_row(algorithm, *(f"{row['positions_per_s'][str(n)]:.0f}" for n in ranks),
                      *(f"{row['ratios'][f'{n}_over_{ranks[0]}']:.2f}x" for n in ranks[1:]))
    console.print(table)
    console.print(f"results: {args.out}")
    return 0


def _timed_training(args, algorithm: str, ranks: int, out: Path) -> dict:
    return timed_training(args, algorithm, out, ["--nproc", str(ranks)] if ranks > 1 else [])


def alternating(algorithms: list[str], modes: list[str], repeats: int, run_one, prefix: str,
                key: str = "mode") -> list[dict]:
    """Every (drafter, mode) run `repeats` times, the modes in reverse order every other round (so that drift in the
    machine's speed hits them alike); `run_one(algorithm, mode, out)` trains one into the fresh directory `out`."""
    runs = []
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        for algorithm in algorithms:
            for repeat in range(repeats):
                for mode in modes if repeat % 2 == 0 else modes[::-1]:
                    out = Path(scratch) / f"{algorithm}-{mode}-{repeat}"  # (a mode: a string, or e.g. a rank count)
                    runs.append({"algorithm": algorithm, key: mode, "repeat": repeat, **run_one(algorithm, mode, out)})
                    console.print(f"{algorithm}, {mode}, repeat {repeat}: {runs[-1]['positions_per_s']:.0f} "
                                  f"positions/s, {runs[-1]['launch_s']:.0f} s, final loss {runs[-1]['losses'][-1]:.4f}")
    return runs


def timed_training(args, algorithm: str, out: Path, options: list[str]) -> dict:
    """Run `dspark train` (the default recipe, `options` added) into `out`; its positions/s (the median of the log
    windows after the first), the windows, the logged losses, the whole command's seconds and the draft's held-out
    greedy τ on the dataset's validation split (as the trainer records it in the checkpoint; None without one)."""
    command = [sys.executable, "-m", "dspark_cli", "train", "--target", args.target, "--dataset", args.dataset,
               "--drafter", algorithm, "--steps", str(args.steps), "--log-every", "10", "--checkpoint-every",
               str(args.steps), "--out", str(out), *options]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    launch_s = time.perf_counter() - start
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [line["positions_per_s"] for line in lines]
    training = json.loads((out / "draft" / "config.json").read_text()).get("training", {})
    return {"positions_per_s": statistics.median(windows[1:] or windows), "windows": windows,
            "losses": [line["loss"] for line in lines], "launch_s": round(launch_s, 1),
            "val_tau": training.get("val_tau")}


if __name__ == "__main__":
    sys.exit(main())
