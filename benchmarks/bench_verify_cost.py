"""What a verification pass costs while decoding, against what the scheduler's step-cost profile says it costs.

The scheduler prices each extra verified token with the target's step-cost profile (`dspark profile`): passes of
w tokens over a cache of `context_tokens` random tokens, timed back to back. This benchmark times the same target
three ways, one request at a time (R = 1), alone on the machine:

  profile   `measure_profile` at each --contexts length: the pass of w = 1..4 tokens and its LM head
  decoding  the engine's own target passes while it decodes the built-in held-out suite's prompts, autoregressively
            (w = 1) and with a DSpark draft at fixed γ = 1..3 (w = γ + 1): every forward call is timed with the
            width and cached length it had, and grouped by width and by context bucket
  the gap   per context bucket, the cost of w = 3 over w = 1 in each
  padding   per γ, the decoding again with the engine padding each pass to the profile's cheapest width at least
            as wide (`StepCostProfile.padded_width`): its pass ms and speed-up against autoregressive, plain and padded

Usage: python benchmarks/bench_verify_cost.py [--dspark DRAFT_DIR] [--contexts 32,64,128,256,512]
       [--prompts 6] [--max-new-tokens 48] [--out benchmarks/results/verify-cost-cpu.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from bench_serving import newest_draft  # noqa: E402

from dspark_core.decoding import GenerationConfig, SpeculativeEngine
from dspark_core.decoding.step_cost import ProfileConfig, decoding_profile, measure_profile
from dspark_core.drafters.checkpoint import load_drafter
from dspark_core.evaluation.speculative import eval_prompts
from dspark_core.evaluation.suites import suite_records
from dspark_core.models import load_target
from dspark_core.paths import write_json_atomic
from dspark_core.provenance import provenance

console = Console(width=150)
WIDTHS = (1, 2, 3, 4)
GAMMAS = (1, 2, 3)


def _bucket(length: int, edges: list[int]) -> int:
    """The --contexts value nearest to a cached length (the buckets decoding's passes are grouped into)."""
    return min(edges, key=lambda edge: abs(edge - length))


def timed_decoding(target, drafter, prompts, gamma: int, max_new_tokens: int, step_costs=None):
    """(width, cached length, seconds) of every target pass the engine makes after the prompts' prefill (the
    forward pass and the LM head over the positions verification reads, as the profile times them), and the
    decoding's new tokens per second. `step_costs`: the engine pads passes by it."""
    calls: list[list] = []
    forward, lm_logits = target.forward_features, target.lm_logits

    def timed(input_ids, *, cache=None, **kwargs):
        cached = cache.get_seq_length() if cache is not None else 0
        started = time.perf_counter()
        out = forward(input_ids, cache=cache, **kwargs)
        calls.append([input_ids.shape[1], cached, time.perf_counter() - started])
        return out

    def timed_head(hidden, *args, **kwargs):
        started = time.perf_counter()
        logits = lm_logits(hidden, *args, **kwargs)
        calls[-1][2] += time.perf_counter() - started
        return logits

    engine = SpeculativeEngine(target, drafter, step_costs=step_costs)
    config = GenerationConfig(max_new_tokens=max_new_tokens, block_size=gamma, speculative=drafter is not None)
    engine.generate(prompts[:1], GenerationConfig(max_new_tokens=8, block_size=gamma, speculative=drafter is not None))
    target.forward_features, target.lm_logits = timed, timed_head
    tokens = seconds = 0.0
    try:
        for prompt in prompts:  # one request at a time: R = 1
            count = len(calls)
            started = time.perf_counter()
            tokens += engine.generate([prompt], config).stats.new_tokens
            seconds += time.perf_counter() - started
            del calls[count]  # the pass that carried the prompt (its prefill)
    finally:
        del target.forward_features, target.lm_logits  # the instance attributes: the methods show again
    return [tuple(call) for call in calls], tokens / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--dspark", type=Path, help="DSpark draft (default: the newest under $DSPARK_HOME)")
    parser.add_argument("--contexts", default="32,64,128,256,512")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repetitions", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "verify-cost-cpu.json")
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    target = load_target(args.target)
    drafter = load_drafter(args.dspark or newest_draft(target.spec, "dspark"), target)

    profile = {}
    with torch.inference_mode():
        for context in contexts:
            measured = measure_profile(target, ProfileConfig(rows=(1,), max_width=max(WIDTHS), context_tokens=context,
                                                             repetitions=args.repetitions))
            profile[context] = dict(zip(measured.widths, measured.ms[0]))
            console.print(f"profile, context {context}: " + ", ".join(f"w{w} {ms:.1f} ms" for w, ms in profile[context].items()))

    prompts = [p.ids for p in eval_prompts(target, suite_records("heldout-v1"), args.prompts)]
    calls, autoregressive = timed_decoding(target, None, prompts, 0, args.max_new_tokens)
    padding = {}  # γ -> the decoding without and with passes padded by the profile
    for gamma in GAMMAS:
        plain, plain_speed = timed_decoding(target, drafter, prompts, gamma, args.max_new_tokens)
        calls += plain
        padded, padded_speed = timed_decoding(target, drafter, prompts, gamma, args.max_new_tokens,
                                              step_costs=decoding_profile(target, gamma))
        padding[gamma] = {
            "pass_ms": statistics.median(ms for w, _, ms in plain if w == gamma + 1) * 1e3,
            "padded_pass_ms": statistics.median(ms for _, _, ms in padded) * 1e3,
            "padded_to": statistics.mode(w for w, _, _ in padded),
            "speedup": plain_speed / autoregressive, "padded_speedup": padded_speed / autoregressive}
    decoding: dict[int, dict[int, float]] = {}
    counts: dict[int, dict[int, int]] = {}
    for width in WIDTHS:
        for context in contexts:
            times = [s for w, c, s in calls if w == width and _bucket(c, contexts) == context]
            if times:
                decoding.setdefault(context, {})[width] = statistics.median(times) * 1e3
                counts.setdefault(context, {})[width] = len(times)

    table = Table(title=f"{target.spec}, one request: ms of a target pass of w tokens (profile / decoding, passes)")
    table.add_column("context", justify="right")
    for width in WIDTHS:
        table.add_column(f"w = {width}", justify="right")
    table.add_column("w3 − w1 profile / decoding", justify="right")
    gaps = {}
    for context in contexts:
        row = [str(context)]
        for width in WIDTHS:
            real = decoding.get(context, {}).get(width)
            row.append(f"{profile[context][width]:.1f} / " + ("–" if real is None else
                       f"{real:.1f} ({counts[context][width]})"))
        real = decoding.get(context, {})
        gaps[context] = {"profile": profile[context][3] - profile[context][1],
                         "decoding": real[3] - real[1] if 1 in real and 3 in real else None}
        row.append(f"{gaps[context]['profile']:.1f} / " + ("–" if gaps[context]["decoding"] is None
                                                            else f"{gaps[context]['decoding']:.1f}"))
        table.add_row(*row)
    console.print(table)
    padded_table = Table(title="decoding at fixed γ, one request: the verification pass, plain and padded to the "
                               "profile's cheapest width; speed-up vs autoregressive")
    for column in ("γ", "pass ms (γ + 1 columns)", "padded to", "padded pass ms", "speed-up", "speed-up padded"):
        padded_table.add_column(column, justify="right")
    for gamma, row in padding.items():
        padded_table.add_row(str(gamma), f"{row['pass_ms']:.1f}", str(row["padded_to"]), f"{row['padded_pass_ms']:.1f}",
                             f"{row['speedup']:.2f}x", f"{row['padded_speedup']:.2f}x")
    console.print(padded_table)
    write_json_atomic(args.out, {
        "benchmark": "bench_verify_cost", "command": " ".join(["python", "benchmarks/bench_verify_cost.py", *sys.argv[1:]]),
        **provenance(), "target": target.spec, "dtype": str(target.dtype), "repetitions": args.repetitions,
        "profile_ms": profile, "decoding_ms": decoding, "decoding_passes": counts, "gap_w3_minus_w1_ms": gaps,
        "padding": padding,
        "calls": [{"width": w, "cached": c, "ms": round(s * 1e3, 3)} for w, c, s in calls],
    })
    console.print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
