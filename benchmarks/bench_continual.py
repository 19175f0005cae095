"""Continual training, measured: `make run` run K times in a row on one $DSPARK_HOME, as a user (or the weekly
schedule) would. The first run trains each drafter from scratch; every later one is a cycle: the dataset grows by
new self-generated prompts (only they are answered and cached) and each drafter continues from its latest
registered draft, and the champion rule decides as ever.

Per cycle it records the dataset (prompts, new prompts, cached samples and how many were copied rather than
computed), and per drafter the version evaluated, the version it grew from, the training steps and tokens over
its line, τ and speed-up against autoregressive decoding on heldout-v1 (greedy), and the champion. The same
numbers come out of the metrics store with:

    dspark sql "SELECT drafter, draft_version, cumulative_steps, round(tau, 3) AS tau, round(speedup, 2) AS speedup
                FROM tau_by_training WHERE temperature = 0 ORDER BY drafter, cumulative_steps"

Usage:
  python benchmarks/bench_continual.py --home /tmp/continual [--cycles 4] [--drafters dspark,dflash,eagle3]
         [--out benchmarks/results/continual-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="$DSPARK_HOME of the runs (kept: rerun to add cycles)")
    parser.add_argument("--cycles", type=int, default=4, help="runs of `make run` after the first")
    parser.add_argument("--drafters", default="dspark,dflash,eagle3")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/continual-cpu.json"))
    args = parser.parse_args(argv)
    os.environ["DSPARK_HOME"] = str(args.home.resolve())  # before anything reads it
    from dspark_core.models.spec import slugify
    from dspark_core.paths import write_json_atomic
    from dspark_core.provenance import provenance

    slug = slugify(args.model)
    runs = []
    for cycle in range(args.cycles + 1):
        started = time.perf_counter()
        command = [sys.executable, "-m", "pipelines.main", "--model", args.model, "--drafters", args.drafters]
        done = subprocess.run(command, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True)
        (args.home / f"make-run-{cycle}.log").write_text(done.stdout + done.stderr)
        row = {"run": cycle, "exit_code": done.returncode, "minutes": (time.perf_counter() - started) / 60,
               **dataset_state(slug), "drafters": drafter_state(slug, args.drafters.split(","))}
        runs.append(row)
        print(summary(row), flush=True)
        write_json_atomic(args.out, {"command": "python benchmarks/bench_continual.py " + shlex.join(
            sys.argv[1:] if argv is None else argv), **provenance(), "model": args.model, "runs": runs})
    return 0


def dataset_state(slug: str) -> dict:
    """The dataset's size after a run: prompts (and the last round's new ones), cached samples (and how many of
    them were copied from the cache's earlier version)."""
    from dspark_core.data.sources import prompt_rounds
    from dspark_core.paths import dspark_home

    data = dspark_home() / "data" / f"{slug}-default"
    rounds = prompt_rounds(data / "prompts.jsonl")
    prompts = sum(1 for line in (data / "prompts.jsonl").read_text().splitlines() if line.strip())
    manifests = sorted(data.glob("*/features-*/manifest.json"))
    cache = json.loads(manifests[-1].read_text()) if manifests else {}
    return {"prompts": prompts, "new_prompts": rounds[-1]["added"] if rounds else prompts,
            "cached_samples": cache.get("num_samples"), "cached_tokens": cache.get("num_tokens"),
            "copied_samples": cache.get("copied_samples", 0)}


def drafter_state(slug: str, drafters: list[str]) -> dict:
    """Per drafter: its latest evaluation (version, τ, speed-up, the training its line had) and lineage."""
    from pipelines.resources import MetricsDatabase, MLflowResource

    tracking = MLflowResource().tracking()
    champion = tracking.champion(slug)
    columns, rows = MetricsDatabase().store().tau_by_training(temperature=0.0)
    latest = {}
    for row in (dict(zip(columns, r)) for r in rows if r[0] == slug):
        latest[row["drafter"]] = row  # ordered by cumulative steps: the last is the newest
    versions = {str(v.version): v for v in tracking.versions(slug)}
    state = {}
    for drafter in drafters:
        row = latest.get(drafter)
        if row is None:
            state[drafter] = None
            continue
        version = versions.get(str(row["draft_version"]))
        state[drafter] = {**row, "parent_version": version.tags.get("dspark.parent_version") if version else None,
                          "champion": champion is not None and str(champion.version) == str(row["draft_version"])}
    return state


def summary(row: dict) -> str:
    parts = [f"run {row['run']} ({row['minutes']:.1f} min, exit {row['exit_code']}): {row['prompts']} prompts "
             f"(+{row['new_prompts']}), cache {row['cached_samples']} samples ({row['copied_samples']} copied)"]
    for drafter, state in row["drafters"].items():
        if state:
            speedup = "-" if state["speedup"] is None else f"{state['speedup']:.2f}x"
            parts.append(f"{drafter} v{state['draft_version']} from {state['parent_version']}: τ {state['tau']:.3f}, "
                         f"{speedup}, {state['cumulative_steps']} steps" + (" ★" if state["champion"] else ""))
    return "\n  ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
