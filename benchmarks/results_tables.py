"""The result tables of the documentation, generated from the result files in benchmarks/results/ (never typed):
each table sits in a page between `<!-- table:NAME -->` and `<!-- /table:NAME -->`, and below it a line with the
files, commands, commits and machines it comes from.

Usage:
  python benchmarks/results_tables.py           # rewrite every table in README.md and docs/*.md
  python benchmarks/results_tables.py --check   # exit 1 naming each table that differs from its files (the tests)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(<!-- table:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _sources(*names: str) -> str:
    """The line under a table: each file with the command, commit and machine it records."""
    parts = []
    for name in names:
        data = _load(name)
        machine = data.get("machine") or {}
        where = (machine.get("cuda") or f"CPU, {machine.get('threads', '?')} threads") if machine else "machine ?"
        commit = str(data.get("git_commit") or "?")[:7] + (" (dirty)" if data.get("dirty") else "")
        parts.append(f"`{name}` (`{data.get('command', '?')}`; commit {commit}; {where})")
    return "<small>Generated from " + "; ".join(parts) + " by `benchmarks/results_tables.py`.</small>\n"


def _int(value: float) -> str:
    """A count with thin groups of three digits, as the docs write them: 27 907."""
    return f"{value:,.0f}".replace(",", " ")


def _tau(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


# ---- the tables -------------------------------------------------------------------------------------------------
_LADDER_FILES = ("ladder-first-rungs-cpu.json", "ladder-reference-rungs-cpu.json",
                 "ladder-reference-rungs-eagle3-cpu.json", "ladder-eagle3-and-depths-cpu.json",
                 "ladder-dflash-depth-5-cpu.json")
_LADDER_RUNGS = [
    ("cpu", "`cpu` preset"),
    ("no-regression", "no hidden-state regression"),
    ("optimizer", "the reference's AdamW (0.9, 0.999), no decay, 4 % warmup"),
    ("full-vocab", "(full vocabulary, measured aside)"),
    ("block-7", "blocks of 7 (Eagle3: 7 training-time-test steps; with its 5 target layers)"),
    ("anchors", "512 anchors per sequence (Eagle3: every position)"),
    ("soft-ce", "Eagle3's soft cross-entropy and 0.8^k step weights"),
    ("depth-5", "depth 5 (= the reference recipe)"),
]
_NOT_A_RUNG = {("dspark", "soft-ce"), ("dflash", "soft-ce"), ("eagle3", "depth-5")}


def ladder() -> str:
    """Held-out greedy τ of each rung of the recipe ladder, per drafter (later files win over earlier ones)."""
    tau = {}
    for name in _LADDER_FILES:
        for run in _load(name)["results"]:
            tau[run["drafter"], run["rung"]] = run["val_tau"]
    lines = ["| rung (cumulative) | DSpark | DFlash | Eagle3 |", "|---|---|---|---|"]
    for rung, label in _LADDER_RUNGS:
        cells = []
        for drafter in ("dspark", "dflash", "eagle3"):
            value = tau.get((drafter, rung))
            text = "–" if (drafter, rung) in _NOT_A_RUNG else "not run" if value is None else _tau(value)
            cells.append(f"({text})" if rung == "full-vocab" and value is not None else text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _sources(*_LADDER_FILES)


def ladder_equal_time() -> str:
    """Each drafter's `cpu` recipe against its whole reference recipe at the same minutes of training: steps, held-out
    τ and acceptance per position, beside the reference recipe's τ at 300 steps (the equal-steps ladder); decoded τ
    greedy and at temperature 1 and the draft's ms per round for one request, where the file has them."""
    data = _load("ladder-equal-time-cpu.json")
    at_300 = {}
    for name in _LADDER_FILES:
        for run in _load(name)["results"]:
            at_300[run["drafter"], run["rung"]] = run["val_tau"]
    lines = ["| drafter | recipe | steps in the budget | training minutes | held-out τ | acceptance @1..γ | "
             "τ at 300 steps | decoded τ, greedy / T = 1 | draft ms/round |", "|---|---|---|---|---|---|---|---|---|"]
    for run in data["results"]:
        recipe = "`cpu` preset" if run["rung"] == "cpu" else f"reference (rung `{run['rung']}`)"
        accept = " / ".join("–" if a is None else f"{a:.2f}" for a in run["val_accept"])
        decoded = (f"{_tau(run['greedy']['tau'])} / {_tau(run['sampled']['tau'])}" if "sampled" in run else "–")
        draft = run.get("quiet_draft_ms_per_round")
        lines.append(f"| {_DRAFTER_NAMES[run['drafter']]} | {recipe} | {_int(run['steps'])} | "
                     f"{run['train_minutes']:.1f} | {_tau(run['val_tau'])} | {accept} | "
                     f"{_tau(at_300.get((run['drafter'], run['rung'])))} | {decoded} | "
                     + ("–" if draft is None else f"{draft:.1f}") + " |")
    notes = []
    if "decode_command" in data:
        decoded = [run for run in data["results"] if "greedy" in run]
        identical = "yes" if all(run["greedy"]["lossless"] for run in decoded) else "**no**"
        notes.append(f"Decoded: {data['decoded_prompts']} held-out suite prompts, 64 tokens each "
                     f"(`{data['decode_command']}`); every greedy output identical to the target's own: {identical}.")
    if "draft_cost_command" in data:
        notes.append(f"Draft ms per round: each prompt decoded alone, every draft in turn, the median of the repeats "
                     f"(`{data['draft_cost_command']}`).")
    return "\n".join(lines) + "\n\n" + "".join(note + "\n\n" for note in notes) + _sources("ladder-equal-time-cpu.json")


_DEPTHS_FILE = "ladder-eagle3-and-depths-cpu.json"


def ladder_depths() -> str:
    """DSpark at the reference recipe by depth (depth 1: the `anchors` rung, 5: the reference itself) beside Eagle3
    at its reference rung: held-out τ, acceptance per position, training seconds per step and draft ms per round."""
    data = _load(_DEPTHS_FILE)
    runs = data["results"]
    by_rung = {(run["drafter"], run["rung"]): run for run in runs}
    rows = [(f"DSpark, depth {depth}", by_rung.get(("dspark", rung))) for depth, rung in
            [(1, "anchors"), (2, "reference-depth-2"), (3, "reference-depth-3"), (4, "reference-depth-4"),
             (5, "depth-5")]]
    rows.append(("Eagle3, reference (soft CE, every position, 7 steps)", by_rung.get(("eagle3", "soft-ce"))))
    timed = "re-timed alone" if "draft_cost_command" in data else "while decoding"
    eagle3 = by_rung.get(("eagle3", "soft-ce"))
    lines = [f"| draft | held-out τ | acceptance @1..7 | training s/step | draft ms/round ({timed}) | "
             "draft cost vs Eagle3's |", "|---|---|---|---|---|---|"]

    def draft_ms(run: dict | None) -> float | None:
        if run is None:
            return None
        return run.get("quiet_draft_ms_per_round") or run.get("greedy", {}).get("draft_ms_per_round")

    for label, run in rows:
        if run is None:
            lines.append(f"| {label} | not run | | | | |")
            continue
        accept = " / ".join("–" if a is None else f"{a:.2f}" for a in run["val_accept"])
        per_step = run["train_minutes"] * 60 / run["steps"]
        draft, reference = draft_ms(run), draft_ms(eagle3)
        lines.append(f"| {label} | {_tau(run['val_tau'])} | {accept} | {per_step:.2f} | "
                     + ("–" if draft is None else f"{draft:.1f}") + " | "
                     + ("–" if draft is None or not reference else f"{draft / reference:.2f}×") + " |")
    command = (f"The draft ms per round were timed again, every draft in turn on the same prompts, alone on the machine: "
               f"`{data['draft_cost_command']}`" + (f" ({data['draft_cost_note']})" if "draft_cost_note" in data else "")
               + ".\n\n" if "draft_cost_command" in data else "")
    return "\n".join(lines) + "\n\n" + command + _sources(_DEPTHS_FILE)


def continual() -> str:
    """`make run` again and again: the dataset, and each drafter's evaluated version, per run."""
    data = _load("continual-cpu.json")
    drafters = sorted({d for run in data["runs"] for d, state in run["drafters"].items() if state})
    lines = ["| run | prompts (new) | cached samples (copied) | "
             + " | ".join(f"{d}: version ← parent, steps, τ, speed-up" for d in drafters) + " |",
             "|---|---|---|" + "---|" * len(drafters)]
    for run in data["runs"]:
        cells = []
        for drafter in drafters:
            state = run["drafters"].get(drafter)
            if not state:
                cells.append("–")
                continue
            speedup = "–" if state.get("speedup") is None else f"{state['speedup']:.2f}×"
            parent = state.get("parent_version") or "?"
            grew = "scratch" if parent == "none" else f"v{parent}"
            cells.append(f"v{state['draft_version']} ← {grew}, {state['cumulative_steps']}, {_tau(state['tau'])}, "
                         f"{speedup}" + (" ★" if state.get("champion") else ""))
        lines.append(f"| {run['run']} | {run['prompts']} (+{run['new_prompts']}) | {run['cached_samples']} "
                     f"({run['copied_samples']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _sources("continual-cpu.json")


def warm_start() -> str:
    """Steps a draft of a derived model needs grown from its parent's draft, against from scratch."""
    data = _load("warm-start-derived-cpu.json")
    lines = ["| run | steps | held-out τ | accept @1..k | minutes |", "|---|---|---|---|---|"]
    for run in data["runs"]:
        accept = " / ".join(f"{a:.2f}" for a in run["val_accept"])
        lines.append(f"| {run['run']} | {run['steps']} | {_tau(run['val_tau'])} | {accept} | "
                     f"{run['train_minutes']:.1f} |")
    return "\n".join(lines) + "\n\n" + data["answer"]["summary"] + ".\n\n" + _sources("warm-start-derived-cpu.json")


_DRAFTER_NAMES = {"prompt-lookup": "prompt lookup", "dspark": "DSpark", "dflash": "DFlash", "eagle3": "Eagle3"}


def drafters(name: str) -> Callable[[], str]:
    """`bench_drafters.py`'s decoding table of one result file: each drafter at each verified γ, τ overall and per
    domain, speed-up against the autoregressive baseline of the same run (the best in bold), lossless or not."""
    def table() -> str:
        data = _load(name)
        results = data["results"]
        order = [key for drafter in _DRAFTER_NAMES for key in (drafter, f"{drafter} γ=4") if key in results]
        best = max(results[key]["speedup"] for key in order)
        lines = ["| drafter | γ verified | τ | τ math / code / chat | speed-up vs autoregressive | output identical |",
                 "|---|---|---|---|---|---|"]
        for key in order:
            run = results[key]
            domains = " / ".join(f"{run['by_domain'][d]['tau']:.2f}" for d in ("math", "code", "chat"))
            speedup = f"{run['speedup']:.2f}×"
            lines.append(f"| {_DRAFTER_NAMES[key.split(' ')[0]]} | {run['block_size']} | {run['tau']:.2f} | {domains} | "
                         + (f"**{speedup}**" if run["speedup"] == best else speedup)
                         + f" | {'yes' if run['identical_to_autoregressive'] else '**no**'} |")
        return "\n".join(lines) + "\n\n" + _sources(name)

    return table


def serving() -> str:
    """`bench_serving.py`: aggregate / per-user tokens/s of each method at each concurrency (the best aggregate of
    each concurrency in bold)."""
    data = _load("serving-cpu.json")
    runs = data["results"]
    levels = sorted({run["concurrency"] for run in runs})
    methods = list(dict.fromkeys(run["method"] for run in runs))
    cell = {(run["method"], run["concurrency"]): run for run in runs}
    best = {r: max(cell[m, r]["aggregate_tokens_per_s"] for m in methods if (m, r) in cell) for r in levels}
    lines = ["| method | " + " | ".join(f"R = {r}" for r in levels) + " |", "|---|" + "---|" * len(levels)]
    for method in methods:
        cells = []
        for r in levels:
            run = cell.get((method, r))
            if run is None:
                cells.append("–")
                continue
            aggregate = f"{run['aggregate_tokens_per_s']:.1f}"
            cells.append((f"**{aggregate}**" if run["aggregate_tokens_per_s"] == best[r] else aggregate)
                         + f" / {run['per_user_tokens_per_s']:.1f}")
        drafter, _, rest = method.partition(" ")
        lines.append(f"| {_DRAFTER_NAMES.get(drafter, drafter)} {rest} | ".replace("  ", " ") + " | ".join(cells) + " |")
    identical = all(run["identical_to_autoregressive"] for run in runs)
    return ("\n".join(lines) + f"\n\nEvery output identical to autoregressive decoding: {'yes' if identical else '**no**'}."
            "\n\n" + _sources("serving-cpu.json"))


_BEFORE_BATCHED_DRAFTING = "serving-cpu-per-request-drafting.json"


def serving_drafting() -> str:
    """Draft ms per round of each drafting method at each concurrency, drafting one request at a time (the earlier
    run) against all active requests in one batched pass (the current one), and R = 8 over R = 1."""
    files = {"one request at a time": _BEFORE_BATCHED_DRAFTING, "batched": "serving-cpu.json"}
    cells = {label: {(run["method"], run["concurrency"]): run["draft_ms_per_round"] for run in _load(name)["results"]
                     if run["algorithm"] != "none"} for label, name in files.items()}
    levels = sorted({r for table in cells.values() for _, r in table})
    methods = [m for m in dict.fromkeys(m for m, _ in cells["batched"]) if "threshold" not in m and "scheduled" not in m]
    lines = ["| method, drafting | " + " | ".join(f"R = {r}" for r in levels) + " | R = 8 / R = 1 |",
             "|---|" + "---|" * (len(levels) + 1)]
    for method in methods:
        drafter, _, rest = method.partition(" ")
        for label, table in cells.items():
            values = [table.get((method, r)) for r in levels]
            ratio = "–" if values[0] is None or values[-1] is None else f"{values[-1] / values[0]:.2f}×"
            lines.append(f"| {_DRAFTER_NAMES.get(drafter, drafter)} {rest}, {label} | "
                         + " | ".join("–" if v is None else f"{v:.1f}" for v in values) + f" | {ratio} |")
    return "\n".join(lines) + "\n\n" + _sources(*files.values())


def ranks() -> str:
    """`bench_cache_ranks.py` and `bench_train_ranks.py`: one rank against two on the same machine."""
    cache, train = _load("cache-ranks-cpu.json"), _load("train-ranks-cpu.json")
    c = cache["results"]
    lines = ["| stage | 1 rank | 2 ranks | ratio |", "|---|---|---|---|",
             f"| feature cache build, {cache['target']} ({cache['cache']['dtype']}), {_int(cache['dataset']['tokens'])} "
             f"tokens, shards of {_int(cache['cache']['shard_tokens'])} | {_int(c['1']['tokens_per_s'])} tokens/s | "
             f"{_int(c['2']['tokens_per_s'])} tokens/s | {cache['ratios']['2_over_1']:.2f}× |"]
    for algorithm in ("dspark", "dflash", "eagle3"):
        result = train["results"][algorithm]
        lines.append(f"| training {_DRAFTER_NAMES[algorithm]}, global batch {train['global_batch']}, {train['steps']} "
                     f"steps (median of the log windows) | {_int(result['positions_per_s']['1'])} positions/s | "
                     f"{_int(result['positions_per_s']['2'])} positions/s | {result['ratios']['2_over_1']:.2f}× |")
    return "\n".join(lines) + "\n\n" + _sources("cache-ranks-cpu.json", "train-ranks-cpu.json")


def utilisation() -> str:
    """`bench_utilisation.py`: each stage's achieved FLOP/s against the matmul throughput this machine attains."""
    data = _load("utilisation-cpu.json")
    attainable = {row["dtype"]: row["gflops"] for row in data["attainable"] if row["shape"].startswith("large")}
    lines = ["| stage | dtype | ms | GFLOP | GFLOP/s | share of attainable |", "|---|---|---|---|---|---|"]
    for row in data["stages"]:
        lines.append(f"| {row['stage']} | {row['dtype']} | {row['ms']:.1f} | {row['gflop']:.3g} | {row['gflops']:.1f} | "
                     f"{row['utilisation']:.1%} |")
    peaks = ", ".join(f"{dtype} {gflops:.0f} GFLOP/s" for dtype, gflops in attainable.items())
    return ("\n".join(lines) + f"\n\nAttainable (a 2048³ matmul): {peaks}. Counting: {data['counting']}.\n\n"
            + _sources("utilisation-cpu.json"))


# ---- ablations (benchmarks/ablate_recipe.py: variants against a baseline trained in the same run) -------------
def _ablation_run(name: str, variant: str) -> dict:
    return _load(name)["results"][variant]


def _delta(name: str, variant: str, baseline_of: str | None = None, *, tau=lambda run: run["val_tau"]) -> str:
    """τ of `variant` and its difference to the baseline of the same run (of `baseline_of`'s run if given)."""
    value, base = tau(_ablation_run(name, variant)), tau(_ablation_run(baseline_of or name, "baseline"))
    return f"{value:.3f} ({value - base:+.3f})".replace("-", "−")


_DSPARK_VARIANTS = [  # (what the variant changes, file, variant, file of the baseline it is compared with)
    ("the block also reads the target's state before the anchor directly, as Eagle3's input does (`--anchor-state`)",
     "ablation-anchor-state.json", "anchor-state", None),
    ("gated sequential head instead of Markov", "ablation-heads.json", "head-gated", None),
    ("RNN sequential head", "ablation-heads.json", "head-rnn", None),
    ("2 backbone layers", "ablation-layers2.json", "layers2", None),
    ("Eagle3 (same run as `--anchor-state`)", "ablation-anchor-state.json", "eagle3", None),
]


def dspark_variants() -> str:
    """DSpark's parts varied one at a time at equal wall-clock, held-out τ at γ 4 against the same run's baseline."""
    lines = ["| DSpark variant | τ (Δ vs the same run's baseline) | acceptance @1..4 | steps |", "|---|---|---|---|"]
    for label, name, variant, baseline_of in _DSPARK_VARIANTS:
        run = _ablation_run(name, variant)
        accept = " / ".join("–" if a is None else f"{a:.2f}" for a in run["val_accept"])
        lines.append(f"| {label} | {_delta(name, variant, baseline_of)} | {accept} | {_int(run['steps'])} |")
    files = sorted({name for _, name, _, _ in _DSPARK_VARIANTS})
    return "\n".join(lines) + "\n\n" + _sources(*files)


def _tau_at_gamma_2(run: dict) -> float:
    """τ when decoding verifies 2 drafts, from held-out conditional acceptance: 1 + a₁ + a₁a₂."""
    a1, a2 = run["val_accept"][:2]
    return 1 + a1 + a1 * a2


_LEVERS = [  # (lever and its default, file, [(variant, its label)], how τ is read)
    ("sequences × anchors per step (default 4 × 16)", "ablation-batch-geometry.json",
     [("b2a32", "2 × 32"), ("b2a16", "2 × 16"), ("b8a8", "8 × 8")], None),
    ("peak learning rate (default 6e-4)", "ablation-learning-rate.json", [("lr1.2e-3", "1.2e-3"), ("lr3e-4", "3e-4")],
     None),
    ("loss weights (default CE 0.1, TV 0.9)", "ablation-loss-weights.json",
     [("ce0.5-tv0.5", "CE 0.5, TV 0.5"), ("ce-only", "CE alone")], None),
    ("training γ (default 4), judged at the γ 2 CPU decoding verifies (1 + a₁ + a₁a₂)", "ablation-train-gamma.json",
     [("gamma3", "γ 3"), ("gamma2", "γ 2")], _tau_at_gamma_2),
]


def recipe_levers() -> str:
    """The recipe's other settings, each varied alone at equal wall-clock against the same run's baseline."""
    lines = ["| lever | baseline τ | variants: τ (Δ vs the baseline) | file |", "|---|---|---|---|"]
    for label, name, variants, tau in _LEVERS:
        read = tau or (lambda run: run["val_tau"])
        cells = "; ".join(f"{shown}: {_delta(name, variant, tau=read)}" for variant, shown in variants)
        lines.append(f"| {label} | {read(_ablation_run(name, 'baseline')):.3f} | {cells} | `{name}` |")
    return "\n".join(lines) + "\n\n" + _sources(*(name for _, name, _, _ in _LEVERS))


def train_precision() -> str:
    """`bench_train_precision.py`: training positions/s, loss and held-out τ, float32 against bfloat16 autocast, per
    drafter: a short run repeated in alternating order, and a long one judged on held-out sequences."""
    parts = []
    for name in ("train-precision-cpu.json", "train-precision-1200-cpu.json"):
        data = _load(name)
        with_tau = any(any((row.get("val_tau") or {}).values()) for row in data["results"].values())
        lines = ["| drafter | float32 positions/s | bfloat16 positions/s | speed-up | largest loss deviation | "
                 "final loss float32 / bfloat16 |" + (" held-out τ float32 / bfloat16 |" if with_tau else ""),
                 "|---|---|---|---|---|---|" + ("---|" if with_tau else "")]
        for algorithm in (a for a in _DRAFTER_NAMES if a in data["results"]):
            row = data["results"][algorithm]
            speed = row["positions_per_s"]
            lines.append(f"| {_DRAFTER_NAMES[algorithm]} | {_int(speed['float32'])} | {_int(speed['bfloat16'])} | "
                         f"{row['speedup']:.2f}× | {row['max_loss_deviation']:.2%} | "
                         f"{row['final_loss']['float32']:.4f} / {row['final_loss']['bfloat16']:.4f} |"
                         + (" " + " / ".join(_tau((row.get("val_tau") or {}).get(m)) for m in ("float32", "bfloat16"))
                            + " |" if with_tau else ""))
        runs = f"{data['repeats']} runs per precision in alternating order" if data["repeats"] > 1 else "one run each"
        parts.append(f"{_int(data['steps'])} steps, the default recipe, {runs} (median positions/s):\n\n"
                     + "\n".join(lines) + "\n\n" + _sources(name))
    return "\n".join(parts)


def train_compile() -> str:
    """`bench_train_compile.py`: training positions/s, loss, whole-command seconds and held-out τ per drafter, eager
    and compiled, in float32 and bfloat16 autocast, against eager float32."""
    data = _load("train-compile-cpu.json")
    base = data["modes"][0]
    lines = [f"| drafter | mode | positions/s | speed-up vs {base} | largest loss deviation | command s "
             f"({_int(data['steps'])} steps) | final loss | speed-up per repeat | held-out τ |",
             "|---|---|---|---|---|---|---|---|---|"]
    for algorithm in (a for a in _DRAFTER_NAMES if a in data["results"]):
        row = data["results"][algorithm]
        speed = {(run["mode"], run["repeat"]): run["positions_per_s"] for run in data["runs"]
                 if run["algorithm"] == algorithm}
        for mode in data["modes"]:
            per_repeat = " / ".join(f"{speed[mode, r] / speed[base, r]:.2f}×" for r in range(data["repeats"]))
            lines.append(f"| {_DRAFTER_NAMES[algorithm]} | {mode.replace('+', ', ')} | "
                         f"{_int(row['positions_per_s'][mode])} | {row['speedup'][mode]:.2f}× | "
                         f"{row['max_loss_deviation'][mode]:.3%} | {row['command_s'][mode]:.0f} | "
                         f"{row['final_loss'][mode]:.4f} | {per_repeat} | {_tau(row['val_tau'][mode])} |")
    runs = f"{data['repeats']} runs per mode in alternating order" if data["repeats"] > 1 else "one run each"
    return (f"{_int(data['steps'])} steps, the default recipe, {runs} (median positions/s; every compiled run from an "
            f"empty inductor cache):\n\n" + "\n".join(lines) + "\n\n" + _sources("train-compile-cpu.json"))


def verify_cost() -> str:
    """`bench_verify_cost.py`: a verification pass of w tokens as the profile times it and as decoding pays it, by
    context; then decoding at fixed γ with passes plain and padded to the profile's cheapest width."""
    data = _load("verify-cost-cpu.json")
    widths = sorted({int(w) for row in data["profile_ms"].values() for w in row})
    lines = ["| context (tokens) | " + " | ".join(f"w = {w}: profile / decoding ms" for w in widths) + " |",
             "|---|" + "---|" * len(widths)]
    for context, row in data["profile_ms"].items():
        real = data["decoding_ms"].get(context, {})
        cells = [f"{row[str(w)]:.1f} / " + (f"{real[str(w)]:.1f}" if str(w) in real else "–") for w in widths]
        lines.append(f"| {context} | " + " | ".join(cells) + " |")
    lines += ["", "| γ (one request) | pass ms, γ + 1 columns | padded to | padded pass ms | speed-up vs "
                  "autoregressive | padded |", "|---|---|---|---|---|---|"]
    for gamma, row in data["padding"].items():
        lines.append(f"| {gamma} | {row['pass_ms']:.1f} | {row['padded_to']} | {row['padded_pass_ms']:.1f} | "
                     f"{row['speedup']:.2f}× | {row['padded_speedup']:.2f}× |")
    return "\n".join(lines) + "\n\n" + _sources("verify-cost-cpu.json")


# ---- the README's headline results -------------------------------------------------------------------------------
def headline() -> str:
    """A few numbers that say where the platform stands, each from its result file (the docs' results page has the
    tables behind them, with commands, commits and machines)."""
    drafters_data = _load("drafters-cpu-bf16train.json")["results"]
    runs = [drafters_data[key] for key in ("dspark", "dflash", "eagle3")]
    gamma4 = [drafters_data[f"{key} γ=4"] for key in ("dspark", "dflash", "eagle3")]
    every = list(drafters_data.values())
    identical = sum(run["identical_to_autoregressive"] for run in every)
    best = max(every, key=lambda run: run["speedup"])
    best_name = next(key for key, run in drafters_data.items() if run is best).split(" ")[0]
    reference = {}
    for name in _LADDER_FILES:
        for run in _load(name)["results"]:
            reference[run["drafter"], run["rung"]] = run["val_tau"]
    ref = {"DSpark": reference["dspark", "depth-5"], "Eagle3": reference["eagle3", "soft-ce"]}
    dflash = reference.get(("dflash", "depth-5"))
    ref["DFlash" if dflash is not None else "DFlash (depth 1)"] = dflash or reference["dflash", "anchors"]
    order = " > ".join(f"{name} {value:.3f}" for name, value in sorted(ref.items(), key=lambda item: -item[1]))
    continual_runs = [run["drafters"]["dspark"] for run in _load("continual-cpu.json")["runs"] if run["drafters"].get("dspark")]
    warm = _load("warm-start-derived-cpu.json")["answer"]
    serving_rows = {(row["method"], row["concurrency"]): row for row in _load("serving-cpu.json")["results"]}
    best_spec = max((row for (method, r), row in serving_rows.items() if r == 8 and method != "autoregressive"),
                    key=lambda row: row["aggregate_tokens_per_s"])
    compiled = _load("train-compile-cpu.json")["results"]
    equal_time = {(run["drafter"], run["rung"] == "cpu"): run["val_tau"]
                  for run in _load("ladder-equal-time-cpu.json")["results"]}  # (drafter, is the cpu recipe) -> τ

    def at_4_min(cpu_recipe: bool) -> str:
        return " / ".join(f"{equal_time[drafter, cpu_recipe]:.3f}" for drafter in ("dspark", "dflash", "eagle3"))

    lines = [
        "| on SmolLM2-135M, 2 CPU cores | result |", "|---|---|",
        f"| greedy output identical to the target's own | {identical} of {len(every)} runs of the drafters benchmark |",
        "| held-out τ, 5 min of training each (DSpark / DFlash / Eagle3), γ 2 · γ 4 | "
        + " / ".join(f"{run['tau']:.2f}" for run in runs) + " · " + " / ".join(f"{run['tau']:.2f}" for run in gamma4)
        + f"; best speed-up {best['speedup']:.2f}× ({_DRAFTER_NAMES[best_name]}, γ {best['block_size']}) |",
        f"| the reference recipe (held-out τ) at 300 steps · at 4 min of training (DSpark / DFlash / Eagle3) | {order} · "
        f"{at_4_min(False)} against the `cpu` recipe's {at_4_min(True)} |",
        f"| `make run` again and again: DSpark's τ over {len(continual_runs)} cycles | "
        + " → ".join(f"{run['tau']:.3f}" for run in continual_runs) + " |",
        f"| a derived model's draft grown from its parent's | from-scratch τ in {warm['steps_to_reach_scratch_tau']} "
        f"steps, {warm['share_of_scratch_steps']:.0%} of the {_int(warm['scratch_steps'])} from scratch |",
        f"| 8 concurrent requests, aggregate tokens/s | autoregressive "
        f"{serving_rows['autoregressive', 8]['aggregate_tokens_per_s']:.0f}, best speculative "
        f"{best_spec['aggregate_tokens_per_s']:.0f} ({best_spec['method']}) |",
        "| training positions/s against eager float32 (DSpark / DFlash / Eagle3): bfloat16 · bfloat16 and "
        "`--compile` | "
        + " / ".join(f"{compiled[a]['speedup']['bfloat16']:.2f}×" for a in ("dspark", "dflash", "eagle3")) + " · "
        + " / ".join(f"{compiled[a]['speedup']['bfloat16+compile']:.2f}×" for a in ("dspark", "dflash", "eagle3"))
        + " |",
    ]
    files = ["drafters-cpu-bf16train.json", *_LADDER_FILES, "ladder-equal-time-cpu.json", "continual-cpu.json",
             "warm-start-derived-cpu.json", "serving-cpu.json", "train-compile-cpu.json"]
    return ("\n".join(lines) + "\n\n<small>Generated from " + ", ".join(f"`{name}`" for name in files)
            + " by `benchmarks/results_tables.py`; commands, commits and machines in docs/results.md.</small>\n")


TABLES: dict[str, Callable[[], str]] = {
    "ladder": ladder, "ladder-depths": ladder_depths, "continual": continual, "warm-start": warm_start,
    "drafters-bf16data": drafters("drafters-cpu-bf16data.json"), "drafters-66k": drafters("drafters-cpu.json"),
    "drafters-bf16train": drafters("drafters-cpu-bf16train.json"),
    "dspark-variants": dspark_variants, "recipe-levers": recipe_levers, "serving": serving, "ranks": ranks,
    "utilisation": utilisation, "train-precision": train_precision, "headline": headline,
    "train-compile": train_compile, "ladder-equal-time": ladder_equal_time,
    "verify-cost": verify_cost, "serving-drafting": serving_drafting,
}


# ---- pages ------------------------------------------------------------------------------------------------------
def render(text: str, where: str = "") -> str:
    """`text` with every table block regenerated; an unknown table name is an error."""
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in TABLES:
            raise SystemExit(f"{where}: unknown table {name!r} (known: {', '.join(TABLES)})")
        return match.group(1) + TABLES[name]() + match.group(4)

    return _BLOCK.sub(replace, text)


def stale(pages: list[Path] = PAGES) -> list[str]:
    """'page: table' for each table whose text differs from what its files say."""
    found = []
    for page in pages:
        text = page.read_text()
        for match in _BLOCK.finditer(text):
            if render(match.group(0), str(page)) != match.group(0):
                found.append(f"{page.relative_to(ROOT) if page.is_relative_to(ROOT) else page}: table "
                             f"{match.group('name')}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only say which tables differ from their files")
    args = parser.parse_args(argv)
    if args.check:
        differing = stale()
        for item in differing:
            print(f"{item} differs from its result files; run python benchmarks/results_tables.py")
        return 1 if differing else 0
    for page in PAGES:
        text = page.read_text()
        updated = render(text, str(page))
        if updated != text:
            page.write_text(updated)
            print(f"updated {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
