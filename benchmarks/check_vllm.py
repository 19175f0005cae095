"""Does vLLM itself serve our exports as we decode them? For each speculators export: vLLM's greedy output equals
our autoregressive output (its autoregressive run and its speculative run with the export), and vLLM's
per-position acceptance equals our engine's on the same prompts, within sampling noise.

Both sides get the same token ids (prompts rendered by our chat template), decode greedily for --max-new-tokens
and stop at the target's end tokens. `vllm_side.py` runs in vLLM's own virtualenv (`make vllm` builds
.venv-vllm; or --vllm-python / $DSPARK_VLLM_PYTHON) and loads each export the way a user serves it,
`LLM(model=EXPORT)`: vLLM resolves the verifier, the method and γ from the export itself, and the check
requires them to be the export's.

How acceptance is counted, on both sides the way vLLM counts it (its scheduler's `SpecDecodingStats`):
* vLLM: the prefill step emits the first token without drafts; from then on every step (a "round") verifies
  γ drafts, all γ counted even in the last round, whose tokens past max_tokens or past an end token are
  dropped afterwards. num_drafts += 1 and accepted_per_position[k] += 1 for every k < accepted, per round.
  Acceptance at position k = Δaccepted_per_position[k-1] / Δnum_drafts (differences around the generate call).
* ours on vLLM's schedule: our engine (our drafter, our verification) decodes prompt + [first token]
  (the first token of our autoregressive output: the token vLLM's prefill emits) with max_new_tokens
  raised by γ and end tokens ignored, so no round is cut short; the rounds are then counted up to the one that
  reaches max_tokens or commits an end token, each with its full γ drafts and accepted count. With
  identical drafts and targets the two counts are equal; numeric near-ties (different kernels) may flip one.
* ours as the engine reports it (`DecodingStats.prefix_accept`: among rounds that proposed >= k drafts, the
  share that accepted >= k; its first round drafts right after the prompt, its last rounds propose fewer)
  is recorded too, for reference; it is not what the check compares.

Tolerance at position k: a 3-sigma bound of the difference of two proportions plus Yates' continuity
correction, 3 * sqrt(p(1-p)(1/n_v + 1/n_o)) + (1/n_v + 1/n_o)/2, with p the pooled rate and n_v, n_o the
rounds counted by vLLM and by us: the noise of comparing two samples of that many rounds.

Usage:
  python benchmarks/check_vllm.py EXPORT [EXPORT ...] [--vllm-python .venv-vllm/bin/python] [--suite heldout-v1]
         [--prompts 6] [--max-new-tokens 64] [--device cpu] [--out benchmarks/results/vllm-check-cpu.json]
Exit status: 0 when every export passed; 1 when one failed, errored or could not be served by this vLLM
build (DSpark on vLLM's CPU build: its V1 runner has no DSpark; reported as "unsupported"); 2 without vLLM.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dspark_core.decoding import GenerationConfig, SpeculativeEngine
from dspark_core.decoding.metrics import RoundRecord
from dspark_core.drafters.checkpoint import load_drafter, read_draft_config
from dspark_core.errors import DsparkError
from dspark_core.evaluation.speculative import eval_prompts
from dspark_core.evaluation.suites import load_suite
from dspark_core.models import load_target
from dspark_core.models.target import TargetModel
from dspark_core.paths import write_json_atomic
from dspark_core.provenance import command_line, provenance
from dspark_core.serving.vllm import HOW_TO_GET_VLLM, read_served_draft, vllm_python

console = Console(width=180)
SIDE = Path(__file__).with_name("vllm_side.py")
#: standard deviations of the acceptance tolerance
Z = 3.0
#: vLLM's wording when its model runner lacks a method ("Model Runner V1 does not support: dspark speculative ...")
UNSUPPORTED_MARKERS = ("does not support", "not supported")


def export_settings(export: Path) -> dict:
    """What the check needs from a speculators export: algorithm, γ, the verifier vLLM will load, our target."""
    served = read_served_draft(export)  # refuses a directory that is not a speculators export
    config = json.loads((export / "config.json").read_text())
    ours = read_draft_config(export)
    verifier = config["speculators_config"]["verifier"]["name_or_path"]
    if Path(verifier).is_absolute() and not Path(verifier).is_dir():  # a local snapshot (hub ids are relative)
        raise DsparkError(f"the verifier of {export}, {verifier}, is not on this machine; import {ours['target']!r} "
                          f"with `dspark models import` and export the draft again here")
    training = ours.get("training", {})
    draft = {"weights_sha256": served.weights_sha256, "target_revision": served.target_revision,
             "target_layer_ids": ours["target_layer_ids"],
             "training": {k: training.get(k) for k in ("cache", "steps", "sample_from_anchor", "batch_size",
                                                       "anchors_per_sequence", "learning_rate", "val_tau")}}
    return {"algorithm": served.algorithm, "gamma": served.gamma, "verifier": verifier, "target": ours["target"],
            "draft": draft}


def suite_prompts(target: TargetModel, suite: str, count: int) -> tuple[list[list[int]], list[str]]:
    """Token ids and record ids of `count` prompts of `suite`, taken in turn from each domain, rendered by the
    target's chat template."""
    prompts = eval_prompts(target, load_suite(suite).selected(count).records)
    return [p.ids for p in prompts], [f"{p.domain}:{p.id}" for p in prompts]


# ---- our side ----

def autoregressive(target: TargetModel, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    result = SpeculativeEngine(target).generate(prompts, GenerationConfig(max_new_tokens=max_tokens))
    return [o.tokens for o in result.outputs]


def _cut(tokens: list[int], max_tokens: int, eos: frozenset[int]) -> list[int]:
    """What a request returns: up to its first end token (kept) and at most max_tokens tokens."""
    end = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
    return tokens[: min(end, max_tokens)]


def rounds_on_vllm_schedule(target: TargetModel, drafter, prompts: list[list[int]], reference: list[list[int]],
                            max_tokens: int, gamma: int) -> tuple[list[list[int]], list[RoundRecord]]:
    """Our engine's speculative outputs and rounds, counted as vLLM counts its steps (module docstring)."""
    eos = target.eos_token_ids
    live = [i for i, ref in enumerate(reference) if max_tokens > 1 and ref and ref[0] not in eos]
    outputs = [list(ref[:1]) for ref in reference]  # vLLM's prefill step emits the first token, no drafts
    counted: list[RoundRecord] = []
    if not live:
        return outputs, counted
    config = GenerationConfig(max_new_tokens=max_tokens - 1 + gamma, block_size=gamma, stop_at_eos=False)
    result = SpeculativeEngine(target, drafter).generate([prompts[i] + reference[i][:1] for i in live], config)
    for i, output in zip(live, result.outputs):
        position = 0
        for record in output.rounds:
            committed = output.tokens[position: position + record.emitted]
            position += record.emitted
            counted.append(record)
            outputs[i] += committed
            if len(outputs[i]) >= max_tokens or any(t in eos for t in committed):
                break
        outputs[i] = _cut(outputs[i], max_tokens, eos)
    return outputs, counted


def counts(records: list[RoundRecord], gamma: int) -> dict:
    """vLLM's spec-decode counters for these rounds (each verified γ drafts)."""
    return {"num_drafts": len(records), "num_draft_tokens": sum(r.proposed for r in records),
            "num_accepted_tokens": sum(r.accepted for r in records),
            "accepted_per_position": [sum(r.accepted >= k for r in records) for k in range(1, gamma + 1)]}


def our_side(target: TargetModel, export: Path, gamma: int, prompts: list[list[int]], reference: list[list[int]],
             max_tokens: int) -> dict:
    """Our engine with the export's drafter: its own decoding (lossless? its reported acceptance) and the
    rounds on vLLM's schedule."""
    drafter = load_drafter(export, target)
    native = SpeculativeEngine(target, drafter).generate(
        prompts, GenerationConfig(max_new_tokens=max_tokens, block_size=gamma))
    outputs, records = rounds_on_vllm_schedule(target, drafter, prompts, reference, max_tokens, gamma)
    return {"native_outputs": [o.tokens for o in native.outputs], "native_prefix_accept": native.stats.prefix_accept,
            "native_tau": native.stats.tau, "outputs": outputs, "counters": counts(records, gamma),
            "all_rounds_full": all(r.proposed == gamma for r in records)}


# ---- comparison ----

def rates(counters: dict) -> list[float | None]:
    drafts = counters["num_drafts"]
    return [n / drafts if drafts else None for n in counters["accepted_per_position"]]


def tolerance(p_vllm: float, n_vllm: int, p_ours: float, n_ours: int) -> float:
    """3 sigma of the difference of two proportions (pooled rate) plus Yates' continuity correction."""
    pooled = (p_vllm * n_vllm + p_ours * n_ours) / (n_vllm + n_ours)
    inverse = 1 / n_vllm + 1 / n_ours
    return Z * math.sqrt(pooled * (1 - pooled) * inverse) + inverse / 2


def compare_acceptance(vllm: dict, ours: dict) -> list[dict]:
    """Per position k: both rates, |difference|, the tolerance, and the raw counts."""
    rows = []
    n_v, n_o = vllm["num_drafts"], ours["num_drafts"]
    for k, (p_v, p_o) in enumerate(zip(rates(vllm), rates(ours)), start=1):
        row = {"position": k, "vllm": p_v, "ours": p_o, "vllm_accepted": vllm["accepted_per_position"][k - 1],
               "ours_accepted": ours["accepted_per_position"][k - 1]}
        if p_v is not None and p_o is not None:
            row["difference"] = abs(p_v - p_o)
            row["tolerance"] = tolerance(p_v, n_v, p_o, n_o)
            row["within"] = row["difference"] <= row["tolerance"]
        else:
            row["within"] = p_v is None and p_o is None  # both drafted nothing
        rows.append(row)
    if len(rates(vllm)) != len(rates(ours)):
        rows.append({"position": None, "within": False, "vllm_positions": len(rates(vllm)),
                     "ours_positions": len(rates(ours))})
    return rows


def mismatches(outputs: list[list[int]], reference: list[list[int]]) -> list[dict]:
    """Prompts whose outputs differ: index, first differing position, lengths."""
    found = []
    for index, (a, b) in enumerate(zip(outputs, reference)):
        if a != b:
            first = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            found.append({"prompt": index, "first_difference": first, "length": len(a), "reference_length": len(b)})
    if len(outputs) != len(reference):
        found.append({"prompt": None, "outputs": len(outputs), "reference_outputs": len(reference)})
    return found


def status_of(side: dict) -> str:
    if "error" not in side:
        return "ok"
    if side.get("stage") == "load" and any(m in side["error"] for m in UNSUPPORTED_MARKERS):
        return "unsupported"
    return "error"


def judge(settings: dict, ours: dict, theirs: dict, reference: list[list[int]], vllm_reference: dict) -> dict:
    """One export's result: what vLLM resolved, output equality, acceptance comparison, status."""
    result = {**settings, "our_lossless_mismatches": mismatches(ours["native_outputs"], reference),
              "our_native_prefix_accept": ours["native_prefix_accept"], "our_native_tau": ours["native_tau"],
              "ours_counters": ours["counters"], "our_rounds_all_full": ours["all_rounds_full"],
              "our_schedule_mismatches": mismatches(ours["outputs"], reference)}
    if "error" in vllm_reference:
        return {**result, "status": "error", "error": f"vLLM's autoregressive run failed: {vllm_reference['error']}"}
    result["vllm_ar_mismatches"] = mismatches(vllm_reference["outputs"], reference)
    status = status_of(theirs)
    if status != "ok":
        return {**result, "status": status, "error": theirs["error"], "stage": theirs.get("stage")}
    resolved = theirs["resolved"]
    result.update(vllm_resolved=resolved, vllm_counters=theirs["counters"], vllm_seconds=theirs["seconds"],
                  vllm_load_seconds=theirs["load_seconds"],
                  vllm_spec_mismatches=mismatches(theirs["outputs"], reference),
                  acceptance=compare_acceptance(theirs["counters"], ours["counters"]))
    result["resolved_as_exported"] = (resolved["method"] == settings["algorithm"]
                                      and resolved["num_speculative_tokens"] == settings["gamma"]
                                      and Path(resolved["verifier"]) == Path(settings["verifier"]))
    passed = (result["resolved_as_exported"] and not result["vllm_ar_mismatches"] and not result["vllm_spec_mismatches"]
              and not result["our_lossless_mismatches"] and not result["our_schedule_mismatches"]
              and ours["all_rounds_full"] and all(row["within"] for row in result["acceptance"]))
    result["status"] = "passed" if passed else "failed"
    return result


# ---- the vLLM side ----

def llm_kwargs(prompts: list[list[int]], max_tokens: int, gamma: int) -> dict:
    """vLLM engine settings: float32 like ours, a context that fits every request, no prefix caching (every prompt
    prefilled whole, as ours is), synchronous scheduling (the counting above), metrics on."""
    context = max(512, -(-(max(map(len, prompts)) + max_tokens + gamma + 1) // 64) * 64)
    return {"dtype": "float32", "max_model_len": context, "max_num_batched_tokens": context,
            "max_num_seqs": min(8, len(prompts)), "enforce_eager": True, "seed": 0, "disable_log_stats": False,
            "enable_prefix_caching": False, "async_scheduling": False}


def run_vllm(python: str, request: dict, timeout: float) -> dict:
    """Run vllm_side.py in `python`; a crash becomes one error for every run it owed."""
    with tempfile.TemporaryDirectory() as scratch:
        request_path, result_path = Path(scratch, "request.json"), Path(scratch, "result.json")
        request_path.write_text(json.dumps(request))
        try:
            run = subprocess.run([python, str(SIDE), str(request_path), str(result_path)], capture_output=True,
                                 text=True, timeout=timeout)
            failure = None if run.returncode == 0 else (run.stderr or run.stdout).strip().splitlines()[-1:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            failure = [f"{type(exc).__name__}: {exc}"]
        if failure is None:
            return json.loads(result_path.read_text())
    error = f"vllm_side.py failed in {python}: {failure[0] if failure else '?'}"
    return {"versions": {}, "autoregressive": {v: {"error": error} for v in request["verifiers"]},
            "speculative": [{"export": e, "stage": "process", "error": error} for e in request["exports"]]}


def check_exports(exports: list[Path], python: str, *, prompts: list[list[int]] | None = None,
                  suite: str = "heldout-v1", count: int = 6, max_tokens: int = 64, target: TargetModel | None = None,
                  device: str = "cpu", timeout: float = 3600) -> dict:
    """Check every export against vLLM in `python`; returns {"settings", "vllm_versions", "results"}."""
    settings = [{"export": str(e), **export_settings(e)} for e in exports]
    targets = {s["target"] for s in settings}
    if target is None and len(targets) != 1:
        raise DsparkError(f"the exports were trained for different targets ({sorted(targets)}); check each target's "
                          f"exports in a separate run")
    target = target or load_target(targets.pop(), device=device, dtype=torch.float32)
    records = None
    if prompts is None:
        prompts, records = suite_prompts(target, suite, count)
    reference = autoregressive(target, prompts, max_tokens)
    ours = [our_side(target, Path(s["export"]), s["gamma"], prompts, reference, max_tokens) for s in settings]
    request = {"prompts": prompts, "max_tokens": max_tokens, "stop_token_ids": sorted(target.eos_token_ids),
               "verifiers": sorted({s["verifier"] for s in settings}), "exports": [s["export"] for s in settings],
               "llm_kwargs": llm_kwargs(prompts, max_tokens, max(s["gamma"] for s in settings))}
    theirs = run_vllm(python, request, timeout)
    results = [judge(s, o, t, reference, theirs["autoregressive"][s["verifier"]])
               for s, o, t in zip(settings, ours, theirs["speculative"])]
    source = {"suite": suite, "records": records} if records else {}
    return {"settings": {**source, "prompts": len(prompts), "prompt_tokens": [len(p) for p in prompts],
                         "max_new_tokens": max_tokens, "greedy": True, "stop_token_ids": request["stop_token_ids"],
                         "llm_kwargs": request["llm_kwargs"],
                         "tolerance": f"{Z:g} * sqrt(p(1-p)(1/n_vllm + 1/n_ours)) + (1/n_vllm + 1/n_ours)/2"},
            "vllm_versions": theirs["versions"], "vllm_platform": theirs.get("platform"), "results": results}


# ---- report ----

def _rate_pair(row: dict) -> str:
    fmt = lambda p: "–" if p is None else f"{p:.3f}"  # noqa: E731
    return f"{fmt(row['vllm'])}/{fmt(row['ours'])}"


def print_table(results: list[dict]) -> None:
    table = Table(title="vLLM serves our exports (acceptance at position k: vLLM/ours on vLLM's schedule)")
    for column in ("export", "method", "γ", "vLLM AR = ours", "vLLM spec = ours AR", "rounds vLLM/ours",
                   "accept@k vLLM/ours", "max |Δ| / tol", "status"):
        table.add_column(column, justify="right")
    for r in results:
        name, yes = Path(r["export"]).name, lambda found: "yes" if not found else f"NO ({len(found)})"  # noqa: E731
        if r["status"] in ("unsupported", "error"):
            # the reason is printed below the table
            table.add_row(name, r["algorithm"], str(r["gamma"]), yes(r.get("vllm_ar_mismatches", [None])), "", "", "",
                          "", r["status"])
            continue
        rows = [row for row in r["acceptance"] if row["position"] is not None]
        worst = max(rows, key=lambda row: row.get("difference", 0) - row.get("tolerance", 0))
        table.add_row(name, r["algorithm"], str(r["gamma"]), yes(r["vllm_ar_mismatches"]),
                      yes(r["vllm_spec_mismatches"]),
                      f"{r['vllm_counters']['num_drafts']}/{r['ours_counters']['num_drafts']}",
                      " ".join(_rate_pair(row) for row in rows),
                      f"{worst.get('difference', 0):.3f} / {worst.get('tolerance', 0):.3f}", r["status"])
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", nargs="+", type=Path,
                        help="directories written by `dspark export --format speculators`")
    parser.add_argument("--vllm-python", "--python", dest="python",
                        help="a Python with vLLM (default: $DSPARK_VLLM_PYTHON, else .venv-vllm/bin/python)")
    parser.add_argument("--suite", default="heldout-v1", help="prompt suite (see `dspark eval --suite`)")
    parser.add_argument("--prompts", type=int, default=6, help="prompts taken from the suite, in turn from each domain")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="our engine's device (vLLM picks its own platform)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    python = vllm_python(args.python)
    if python is None:
        console.print(f"[red]error:[/] no Python with vLLM: {HOW_TO_GET_VLLM}")
        return 2
    for export in args.exports:
        if not (export / "config.json").is_file():
            console.print(f"[red]error:[/] {export} is not an export directory (no config.json); pass the --out "
                          f"directory of `dspark export --format speculators`")
            return 2
    try:
        report = check_exports(args.exports, python, suite=args.suite, count=args.prompts,
                               max_tokens=args.max_new_tokens, device=args.device)
    except DsparkError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    print_table(report["results"])
    for r in report["results"]:
        if r["status"] != "passed":
            details = {key: r[key] for key in ("error", "vllm_ar_mismatches", "vllm_spec_mismatches",
                                               "our_lossless_mismatches", "our_schedule_mismatches", "vllm_resolved")
                       if r.get(key)}
            console.print(f"{Path(r['export']).name}: {r['status']} {json.dumps(details)}")
            if r["status"] == "unsupported":
                console.print("  this vLLM build cannot serve it (DSpark needs vLLM's V2 model runner: a GPU build "
                              "with Triton); pass such a build's Python with --vllm-python")
    if args.out:
        argv_used = ["benchmarks/check_vllm.py", *(argv if argv is not None else sys.argv[1:])]
        write_json_atomic(args.out, {"command": command_line(["python", *argv_used]), **provenance(), **report})
    return 0 if all(r["status"] == "passed" for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
