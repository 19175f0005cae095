"""Feature-cache build throughput with 1 and with N ranks (torchrun: gloo on a CPU, NCCL with one GPU per rank).

First the data, once and untimed (both commands reuse or resume what is there): `dspark data prompts --source
self` (the target writes --count prompts) and `dspark data regenerate` (it answers them), under --home. Then,
for every rank count, over --repeats rounds in alternating order (drift in the machine's speed hits all counts
alike): delete the dataset's feature cache and build it again as that many ranks of this script under
`torchrun --standalone`, each rank calling the library's `build_cache` (what `dspark data cache` runs). Timed:

  build_s    rank 0's wall clock from a barrier once every rank has loaded the target to a barrier once every
             rank has the manifest: the cache build itself (tokenizing, the target's forward passes, writing,
             checksums, the merge)
  launch_s   the whole torchrun launch around it (process start, imports, the model load, the build)

tokens/s = the cache's tokens / build_s (the median over repeats), and the ratio N ranks / 1 rank. On a CPU the
ranks share its cores: torchrun gives each of several ranks one thread (OMP_NUM_THREADS=1) where one rank alone
uses them all, so there the ratio measures what splitting costs, not a scale-out; on GPUs each rank has its own.

Usage: python benchmarks/bench_cache_ranks.py [--home /tmp/dspark-bench-cache-ranks] [--target smollm2-135m]
       [--count 160] [--ranks 1,2] [--repeats 3] [--shard-tokens 2048] [--out benchmarks/results/cache-ranks-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(width=150)
RESULTS = Path(__file__).parent / "results"
DATASET = "bench-cache-ranks"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        return _worker(args)
    os.environ["DSPARK_HOME"] = str(args.home)  # before dspark_core reads it; the subprocesses inherit it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _prepare_data(args)
    runs = []
    ranks = [int(n) for n in args.ranks.split(",")]
    for repeat in range(args.repeats):
        for count in ranks if repeat % 2 == 0 else ranks[::-1]:
            runs.append({"ranks": count, "repeat": repeat, **_timed_build(args, count)})
            console.print(f"{count} rank(s), repeat {repeat}: {runs[-1]['tokens'] / runs[-1]['build_s']:.0f} tok/s "
                          f"(build {runs[-1]['build_s']:.1f} s, launch {runs[-1]['launch_s']:.1f} s)")
    _write_results(args, ranks, runs, argv)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/dspark-bench-cache-ranks"),
                        help="$DSPARK_HOME of the benchmark (the model snapshot, the dataset, its cache)")
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--dataset", default=DATASET)
    parser.add_argument("--count", type=int, default=160, help="prompts the target writes (conversations)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest response the target writes")
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-tokens", type=int, default=2048,
                        help="tokens per shard: small enough that every rank gets several shards")
    parser.add_argument("--target-dtype", default="auto", help="the target's precision while it writes the cache")
    parser.add_argument("--out", type=Path, default=RESULTS / "cache-ranks-cpu.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a rank, started by torchrun
    parser.add_argument("--timing", type=Path, help=argparse.SUPPRESS)  # where rank 0 of a worker job writes
    return parser


def _dspark(*arguments: str) -> None:
    subprocess.run([sys.executable, "-m", "dspark_cli", *arguments], check=True)


def _prepare_data(args) -> None:
    """The dataset's prompts and responses (reused or resumed by the commands themselves; not timed)."""
    _dspark("data", "prompts", "--source", "self", "--target", args.target, "--dataset", args.dataset,
            "--count", str(args.count))
    _dspark("data", "regenerate", "--target", args.target, "--dataset", args.dataset,
            "--max-new-tokens", str(args.max_new_tokens))


def _timed_build(args, ranks: int) -> dict:
    """One build of the whole cache from scratch as `ranks` ranks; rank 0's timing plus the launch's."""
    from dspark_core.data import layout

    for cache in layout.target_dir(args.dataset, args.target).glob("features-L*"):
        shutil.rmtree(cache)
    timing = args.home / f"timing-{ranks}.json"
    timing.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               str(Path(__file__).resolve()), "--worker", "--timing", str(timing), "--target", args.target,
               "--dataset", args.dataset, "--shard-tokens", str(args.shard_tokens),
               "--target-dtype", args.target_dtype]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    launch_s = time.perf_counter() - start
    return {**json.loads(timing.read_text()), "launch_s": round(launch_s, 2)}


def _worker(args) -> int:
    """One rank: load the target, wait for the others, build the cache, wait for the others; rank 0 records."""
    import torch

    from dspark_core.distributed import process_group, rank_device
    from dspark_core.models import load_target
    from dspark_core.paths import write_json_atomic
    from dspark_core.recipes.features import CacheConfig, build_cache

    with process_group() as world:
        with world.main_first():
            target = load_target(args.target, dtype=args.target_dtype, for_data=True, device=rank_device(None))
        config = CacheConfig(shard_tokens=args.shard_tokens)
        world.barrier()
        start = time.perf_counter()
        report = build_cache(target, args.dataset, config, progress=False, world=world)
        world.barrier()
        seconds = time.perf_counter() - start
        threads = world.gather(torch.get_num_threads())
    if world.is_main:
        manifest = json.loads((report.path / "manifest.json").read_text())
        write_json_atomic(args.timing, {
            "build_s": round(seconds, 2), "tokens": report.tokens, "samples": report.samples, "shards": report.shards,
            "shards_per_rank": [sum(e["rank"] == r for e in manifest["shards"]) for r in range(world.size)],
            "threads_per_rank": threads, "target_dtype": str(target.dtype).removeprefix("torch."),
            "target_revision": target.revision, "cache_dtype": report.dtype, "layer_ids": report.layer_ids,
            "device": str(target.device), "shard_ids": [e["ids"] for e in manifest["shards"]],
        })
    return 0


def _write_results(args, ranks: list[int], runs: list[dict], argv: list[str] | None) -> None:
    from dspark_core.paths import write_json_atomic
    from dspark_core.provenance import provenance

    first = runs[0]
    summary = {}
    for count in ranks:
        mine = [r for r in runs if r["ranks"] == count]
        build_s = statistics.median(r["build_s"] for r in mine)
        launch_s = statistics.median(r["launch_s"] for r in mine)
        summary[str(count)] = {
            "build_s_median": round(build_s, 2), "tokens_per_s": round(first["tokens"] / build_s, 1),
            "launch_s_median": round(launch_s, 2), "tokens_per_s_with_launch": round(first["tokens"] / launch_s, 1),
            "threads_per_rank": mine[0]["threads_per_rank"], "shards_per_rank": mine[0]["shards_per_rank"],
        }
    base = summary[str(ranks[0])]["tokens_per_s"]
    same_samples = all(r["shard_ids"] == first["shard_ids"] for r in runs)
    payload = {
        "benchmark": "bench_cache_ranks",
        "command": " ".join(["python", "benchmarks/bench_cache_ranks.py", *(sys.argv[1:] if argv is None else argv)]),
        **provenance(),
        "cpu_cores": os.cpu_count(),
        "target": args.target, "target_revision": first["target_revision"], "target_dtype": first["target_dtype"],
        "device": first["device"],
        "dataset": {"name": args.dataset, "home": str(args.home), "conversations": args.count,
                    "max_new_tokens": args.max_new_tokens, "samples": first["samples"], "tokens": first["tokens"]},
        "cache": {"layer_ids": first["layer_ids"], "dtype": first["cache_dtype"], "shard_tokens": args.shard_tokens,
                  "shards": first["shards"]},
        "results": summary,
        "ratios": {f"{count}_over_{ranks[0]}": round(summary[str(count)]["tokens_per_s"] / base, 3)
                   for count in ranks[1:]},
        "same_samples_in_every_build": same_samples,
        "runs": [{k: v for k, v in r.items() if k != "shard_ids"} for r in runs],
    }
    write_json_atomic(args.out, payload)
    table = Table(title=f"feature cache build, {first['tokens']} tokens, {args.target} ({first['target_dtype']}) "
                        f"on {first['device']}")
    for column in ("ranks", "threads/rank", "shards/rank", "build s (median)", "tok/s", "with launch tok/s", "ratio"):
        table.add_column(column, justify="right")
    for count in ranks:
        row = summary[str(count)]
        table.add_row(str(count), str(row["threads_per_rank"]), str(row["shards_per_rank"]),
                      f"{row['build_s_median']:.1f}", f"{row['tokens_per_s']:.0f}", f"{row['tokens_per_s_with_launch']:.0f}",
                      f"{row['tokens_per_s'] / base:.2f}x")
    console.print(table)
    console.print(f"results: {args.out}")


if __name__ == "__main__":
    sys.exit(main())
