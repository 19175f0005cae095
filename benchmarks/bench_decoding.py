"""Decoding speed on the real packaged SmolLM2 (CPU by default), all measured in one process run:

1. the engine's own autoregressive decoding vs transformers' `generate` (greedy, same prompts, both stop at EOS);
2. prompt-lookup speculative decoding vs the engine's autoregressive decoding (the speed-up definition).

Reports ratios, not absolute seconds (shared machines are noisy). Usage:
    python benchmarks/bench_decoding.py [--max-new-tokens 128] [--repeats 3] [--target smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dspark_core.decoding import GenerationConfig, PromptLookupDrafter, SpeculativeEngine
from dspark_core.models import load_target

PROMPTS = {
    # Tasks that quote their input give prompt lookup something to copy; the open-ended one barely does.
    "rewrite": "Rewrite this sentence in the past tense, keeping every other word the same: "
    "The engineer opens the laptop, reads the failing test, fixes the bug and pushes the change.",
    "code-edit": "Add a docstring to this Python function and return it unchanged otherwise:\n\n"
    "def moving_average(values, window):\n    out = []\n    for i in range(len(values) - window + 1):\n"
    "        out.append(sum(values[i:i + window]) / window)\n    return out\n",
    "list-repeat": "Repeat this list twice, numbered: apples, pears, plums, cherries, grapes, lemons.",
    "open-ended": "Give three tips for a first marathon.",
}


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/decoding.json")
    args = parser.parse_args()

    console = Console(width=160)
    torch.manual_seed(0)
    target = load_target(args.target)
    console.print(f"target {target.spec} on {target.device} ({target.dtype}), torch threads {torch.get_num_threads()}")
    n = args.max_new_tokens
    # Both sides stop at EOS (as in real use); identical outputs mean identical token counts.
    config = GenerationConfig(max_new_tokens=n, block_size=args.block_size)
    autoregressive = SpeculativeEngine(target, None)
    lookup = SpeculativeEngine(target, PromptLookupDrafter())

    def hf_generate(ids):
        out = target.model.generate(torch.tensor([ids], device=target.device), max_new_tokens=n, do_sample=False,
                                    pad_token_id=target.tokenizer.pad_token_id)
        return out[0, len(ids):].tolist()

    encoded = {name: target.encode_prompt(text, chat=True) for name, text in PROMPTS.items()}
    hf_generate(encoded["open-ended"][:16])  # warm-up of both code paths
    autoregressive.generate([encoded["open-ended"][:16]], GenerationConfig(max_new_tokens=8))

    rows, report = [], {"target": target.spec, "revision": target.revision, "max_new_tokens": n, "prompts": {}}
    for name, ids in encoded.items():
        times = {"hf": [], "ar": [], "pl": []}
        for _ in range(args.repeats):  # interleaved so that machine noise hits all three alike
            hf_tokens, seconds = timed(lambda: hf_generate(ids))
            times["hf"].append(seconds)
            ar, seconds = timed(lambda: autoregressive.generate([ids], config))
            times["ar"].append(seconds)
            pl, seconds = timed(lambda: lookup.generate([ids], config))
            times["pl"].append(seconds)
        med = {key: statistics.median(values) for key, values in times.items()}
        produced = {"hf": len(hf_tokens), "ar": ar.stats.new_tokens, "pl": pl.stats.new_tokens}
        entry = {
            "new_tokens": produced,
            "hf_tokens_per_s": produced["hf"] / med["hf"],
            "engine_ar_tokens_per_s": produced["ar"] / med["ar"],
            "prompt_lookup_tokens_per_s": produced["pl"] / med["pl"],
            "engine_vs_hf": (produced["ar"] / med["ar"]) / (produced["hf"] / med["hf"]),
            "prompt_lookup_speedup": (produced["pl"] / med["pl"]) / (produced["ar"] / med["ar"]),
            "tau": pl.stats.tau,
            "draft_ms_per_round": pl.stats.draft_ms_per_round,
            "verify_ms_per_round": pl.stats.verify_ms_per_round,
            "ar_verify_ms_per_round": ar.stats.verify_ms_per_round,
            "identical_engine_ar_vs_hf": ar.outputs[0].tokens == hf_tokens,
            "identical_prompt_lookup_vs_ar": pl.outputs[0].tokens == ar.outputs[0].tokens,
        }
        report["prompts"][name] = entry
        rows.append((name, entry))

    table = Table(title=f"{target.spec}: up to {n} new tokens, greedy, median of {args.repeats}")
    for column in ("prompt", "tokens", "HF tok/s", "engine AR tok/s", "engine/HF", "PL tok/s", "PL speed-up", "τ",
                   "draft ms", "verify ms", "AR step ms", "identical"):
        table.add_column(column, justify="right")
    for name, e in rows:
        table.add_row(
            name, str(e["new_tokens"]["ar"]), f"{e['hf_tokens_per_s']:.1f}", f"{e['engine_ar_tokens_per_s']:.1f}", f"{e['engine_vs_hf']:.2f}x",
            f"{e['prompt_lookup_tokens_per_s']:.1f}", f"{e['prompt_lookup_speedup']:.2f}x", f"{e['tau']:.2f}",
            f"{e['draft_ms_per_round']:.2f}", f"{e['verify_ms_per_round']:.1f}", f"{e['ar_verify_ms_per_round']:.1f}",
            "yes" if e["identical_engine_ar_vs_hf"] and e["identical_prompt_lookup_vs_ar"] else "NO",
        )
    console.print(table)
    geo = lambda key: statistics.geometric_mean(e[key] for _, e in rows)  # noqa: E731
    report["geomean_engine_vs_hf"] = geo("engine_vs_hf")
    report["geomean_prompt_lookup_speedup"] = geo("prompt_lookup_speedup")
    console.print(f"geometric mean: engine AR vs HF generate {report['geomean_engine_vs_hf']:.2f}x, "
                  f"prompt-lookup speed-up {report['geomean_prompt_lookup_speedup']:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
