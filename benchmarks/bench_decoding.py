"""Decoding speed: our engine against transformers' own decoding, in one process, on the same prompts.

Every method decodes the same prompts of a built-in evaluation suite (rendered with the chat template), greedy,
the same number of new tokens at most, all stopping at EOS, interleaved prompt by prompt (and in a rotating
order) so that machine noise hits all of them alike:

  ours-ar             our engine, autoregressive (SpeculativeEngine(target, None)): the baseline of every speed-up
  hf-generate         transformers' `generate(do_sample=False)`
  hf-prompt-lookup    transformers' assisted generation with `prompt_lookup_num_tokens`
  hf-assisted         transformers' assisted generation with `assistant_model=` the target's first K decoder
                      layers under its own embedding, final norm and LM head (an untrained early-exit draft)
  ours-prompt-lookup  our PromptLookupDrafter through our engine
  <name>              each trained draft (`--drafter NAME=PATH`; by default the current exports of `make run`)
  vllm-ar             vLLM (its CPU build from .venv-vllm, or --vllm-python), autoregressive, on the same token ids
  vllm-<name>         vLLM speculative with each trained draft's speculators export that vLLM serves (DFlash and
                      Eagle3 on CPU; DSpark needs vLLM on a GPU), γ = --block-size

vLLM runs in processes of its own (`vllm_side.py --worker`, one engine each, started before the measurement and
idle while the others decode); its time is what `LLM.generate` takes inside the worker, like ours around
`SpeculativeEngine.generate`. Without --no-batched, a second pass decodes all prompts as one batch with each
method that takes batches (our engine, vLLM; transformers' generate with left padding; its assisted generation
takes one request only).

Per method: tokens/s (all generated tokens over all seconds), speed-up against ours-ar and against hf-generate,
τ (tokens per target forward pass, i.e. per verification round; transformers' passes are counted with a hook on
the target), draft/verify ms per round (our engine), efficiency = speed-up / τ, and on how many prompts the
output equals ours-ar's token for token (and hf-generate's). Writes a JSON result file, a Markdown report beside
it, and long-form rows into the metrics database's `decoding_benchmarks` table.

Usage: python benchmarks/bench_decoding.py [--prompts 6] [--max-new-tokens 96] [--device cuda]
       [--drafter NAME=PATH ...] [--assistant-layers K] [--no-vllm | --vllm-python PY] [--no-batched]
       [--out FILE] [--db FILE | --no-record]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dspark_core.decoding import GenerationConfig, PromptLookupDrafter, SpeculativeEngine
from dspark_core.drafters.checkpoint import load_drafter, read_draft_config
from dspark_core.drafters.registry import ALGORITHMS
from dspark_core.errors import DsparkError
from dspark_core.evaluation.speculative import EvalPrompt, eval_prompts
from dspark_core.evaluation.suites import load_suite
from dspark_core.models import load_target
from dspark_core.models.spec import slugify
from dspark_core.models.truncated import truncated_copy
from dspark_core.paths import dspark_home, settled_directory, write_json_atomic
from dspark_core.settings import DEFAULT_DECODE_BLOCK_SIZE
from dspark_core.store import DecodingBenchmarkRow, measurement_key, open_metrics_store, record_decoding_benchmark
from dspark_core.store.acceptance import now_utc
from dspark_core.provenance import provenance
from dspark_core.serving.vllm import (HOW_TO_GET_VLLM, read_served_draft, refusal, speculators_export, vllm_platform,
                                      vllm_python)

console = Console(width=170)
RESULTS = Path(__file__).parent / "results"
VLLM_SIDE = Path(__file__).with_name("vllm_side.py")
AR, HF = "ours-ar", "hf-generate"


# ---- one decode of one prompt ----------------------------------------------------------------------------
@dataclass
class Run:
    tokens: list[int]
    seconds: float
    #: target forward passes (= verification rounds); None when not known
    forwards: int | None
    #: our engine only: timed rounds and the ms they spent drafting / verifying
    timed_rounds: int = 0
    draft_ms: float = 0.0
    verify_ms: float = 0.0


@dataclass
class BatchRun:
    """One decode of all prompts as one batch."""

    outputs: list[list[int]]
    seconds: float


def _cut_at_eos(tokens: list[int], eos: frozenset[int]) -> list[int]:
    for index, token in enumerate(tokens):
        if token in eos:
            return tokens[: index + 1]
    return tokens


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class EngineMethod:
    """A method decoded by our SpeculativeEngine (drafter None: autoregressive)."""

    name: str
    engine: SpeculativeEngine
    block_size: int
    description: str
    source: str | None = None  # the draft's directory, for trained drafts

    @property
    def speculative(self) -> bool:
        return self.engine.drafter is not None

    def decode(self, ids: list[int], max_new_tokens: int) -> Run:
        config = GenerationConfig(max_new_tokens=max_new_tokens, block_size=self.block_size,
                                  speculative=self.speculative)
        device = self.engine.target.device
        _synchronize(device)
        started = time.perf_counter()
        result = self.engine.generate([ids], config)
        _synchronize(device)
        seconds = time.perf_counter() - started
        stats = result.stats
        return Run(result.outputs[0].tokens, seconds, stats.rounds, stats.batch_rounds,
                   stats.draft_ms_per_round * stats.batch_rounds, stats.verify_ms_per_round * stats.batch_rounds)

    def decode_batch(self, prompts: list[list[int]], max_new_tokens: int) -> BatchRun:
        config = GenerationConfig(max_new_tokens=max_new_tokens, block_size=self.block_size,
                                  speculative=self.speculative)
        device = self.engine.target.device
        _synchronize(device)
        started = time.perf_counter()
        result = self.engine.generate(prompts, config)
        _synchronize(device)
        return BatchRun([o.tokens for o in result.outputs], time.perf_counter() - started)


@dataclass
class TransformersMethod:
    """A method decoded by transformers' `generate` on the target's own HF model."""

    name: str
    target: object
    options: dict  # extra `generate` arguments (assistant_model, prompt_lookup_num_tokens)
    description: str
    speculative: bool
    source: str | None = None

    def decode(self, ids: list[int], max_new_tokens: int) -> Run:
        target = self.target
        input_ids = torch.tensor([ids], device=target.device)
        device = target.device
        with _counting_forwards(target.model) as forwards:
            _synchronize(device)
            started = time.perf_counter()
            out = target.model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=sorted(target.eos_token_ids), pad_token_id=_pad_token_id(target), **self.options)
            _synchronize(device)
            seconds = time.perf_counter() - started
        # generate pads nothing for batch 1, but be exact about EOS
        return Run(_cut_at_eos(out[0, len(ids):].tolist(), target.eos_token_ids), seconds, forwards[0])

    def decode_batch(self, prompts: list[list[int]], max_new_tokens: int) -> BatchRun:
        """The prompts left-padded to one tensor (how `generate` decodes a batch)."""
        target, pad = self.target, _pad_token_id(self.target)
        width = max(map(len, prompts))
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=target.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=target.device)
        _synchronize(target.device)
        started = time.perf_counter()
        out = target.model.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=sorted(target.eos_token_ids), pad_token_id=pad, **self.options)
        _synchronize(target.device)
        seconds = time.perf_counter() - started
        return BatchRun([_cut_at_eos(row[width:].tolist(), target.eos_token_ids) for row in out], seconds)


class VllmMethod:
    """A method decoded by vLLM in a worker process of its own (`vllm_side.py --worker`: one engine, kept between
    requests, idle while the other methods decode). Its seconds are those of `LLM.generate` inside the worker."""

    def __init__(self, name: str, description: str, *, python: str, model: str, llm_kwargs: dict,
                 eos: frozenset[int], log: Path, speculative: bool, source: str | None = None):
        self.name, self.description, self.speculative, self.source = name, description, speculative, source
        self.eos = sorted(eos)
        config = Path(tempfile.mkdtemp(prefix="dspark-vllm-")) / "worker.json"
        config.write_text(json.dumps({"model": model, "llm_kwargs": llm_kwargs}))
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               # as many threads as our engine's (vLLM's CPU build drops to one unless OMP_NUM_THREADS says)
               "OMP_NUM_THREADS": str(torch.get_num_threads())}
        with open(log, "a") as handle:
            self.process = subprocess.Popen([python, str(VLLM_SIDE), "--worker", str(config)], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=handle, text=True, env=env)
        self.resolved = self._answer()

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        reply = json.loads(line) if line.strip() else {"error": f"the worker exited ({self.process.poll()})"}
        if "error" in reply:
            self.close()
            raise DsparkError(f"vLLM ({self.name}): {reply['error']}")
        return reply

    def _ask(self, prompts: list[list[int]], max_new_tokens: int) -> dict:
        request = {"prompts": prompts, "max_tokens": max_new_tokens, "stop_token_ids": self.eos, "detokenize": False}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def decode(self, ids: list[int], max_new_tokens: int) -> Run:
        reply = self._ask([ids], max_new_tokens)
        tokens = reply["outputs"][0]
        # its first token comes from the prefill pass; then one pass per step (verifying the step's drafts)
        forwards = 1 + reply["counters"]["num_drafts"] if self.speculative else len(tokens)
        return Run(tokens, reply["seconds"], forwards)

    def decode_batch(self, prompts: list[list[int]], max_new_tokens: int) -> BatchRun:
        reply = self._ask(prompts, max_new_tokens)
        return BatchRun(reply["outputs"], reply["seconds"])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()


@contextmanager
def _counting_forwards(model: torch.nn.Module):
    """Counts calls of `model`'s forward (the target's passes; an assistant model is another module)."""
    count = [0]
    handle = model.register_forward_pre_hook(lambda _module, _args: count.__setitem__(0, count[0] + 1))
    try:
        yield count
    finally:
        handle.remove()


def _pad_token_id(target) -> int | None:
    pad = target.tokenizer.pad_token_id
    return pad if pad is not None else min(target.eos_token_ids, default=None)


# ---- what to compare -------------------------------------------------------------------------------------
def current_exports(spec: str) -> dict[str, Path]:
    """The most recently written export of each drafter of base model `spec` under $DSPARK_HOME (what the last
    `make run` exported; no Dagster needed, so this also runs on a machine with the library only)."""
    slug, found = slugify(spec), {}
    for algorithm in ALGORITHMS:
        # An export whose replacement was killed half-way is `<name>.old` until the next writer puts it back.
        exports = {path.with_name(path.name.removesuffix(".old"))
                   for path in (dspark_home() / "exports" / slug / algorithm).glob("*")
                   if path.is_dir() and not path.name.startswith(".") and (path / "dspark_export.json").is_file()}
        if exports:
            found[algorithm] = max(exports, key=lambda path: settled_directory(path).stat().st_mtime)
    return found


def _drafter_options(values: list[str]) -> dict[str, Path]:
    drafts = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--drafter {value!r}: expected NAME=PATH (a checkpoint or export directory)")
        if name in drafts or name in (AR, HF, "hf-prompt-lookup", "hf-assisted", "ours-prompt-lookup"):
            raise SystemExit(f"--drafter {value!r}: the name {name!r} is taken; choose another")
        drafts[name] = Path(path).expanduser()
    return drafts


def build_methods(target, args, drafts: dict[str, Path], explicit: set[str]) -> tuple[list, int]:
    """The methods in the order they are reported, and the assistant's layer count."""
    layers = target.num_layers
    assistant_layers = args.assistant_layers or max(1, layers // 4)
    assistant = truncated_copy(target.model, assistant_layers)
    if args.assistant_tokens is not None:
        assistant.generation_config.num_assistant_tokens = args.assistant_tokens
    block = args.block_size
    methods = [
        EngineMethod(AR, SpeculativeEngine(target, None), 0, "our engine, autoregressive"),
        TransformersMethod(HF, target, {}, "transformers generate, greedy", speculative=False),
        TransformersMethod("hf-prompt-lookup", target, {"prompt_lookup_num_tokens": args.prompt_lookup_tokens},
                           f"transformers assisted generation, prompt_lookup_num_tokens={args.prompt_lookup_tokens}",
                           speculative=True),
        TransformersMethod("hf-assisted", target, {"assistant_model": assistant},
                           f"transformers assisted generation, assistant = the target's first {assistant_layers} of "
                           f"{layers} layers (num_assistant_tokens "
                           f"{args.assistant_tokens or 'at transformers default'})",
                           speculative=True),
        EngineMethod("ours-prompt-lookup", SpeculativeEngine(target, PromptLookupDrafter()), block,
                     f"our engine, PromptLookupDrafter, ≤{block} drafts per round"),
    ]
    for name, path in drafts.items():
        try:
            drafter = load_drafter(path, target)
            algorithm = read_draft_config(path)["algorithm"]
        except DsparkError as exc:
            if name in explicit:
                raise SystemExit(f"--drafter {name}={path}: {exc}") from None
            console.print(f"[yellow]skipping {name} ({escape(str(path))}): {escape(str(exc))}[/]")
            continue
        methods.append(EngineMethod(name, SpeculativeEngine(target, drafter), block,
                                    f"our engine, trained {algorithm} draft, ≤{block} drafts per round", str(path)))
    return methods, assistant_layers


def build_vllm_methods(target, args, drafts: dict[str, Path], prompts: list[EvalPrompt],
                       log: Path) -> tuple[list, dict[str, str]]:
    """vllm-ar and vllm-<name> for every draft vLLM serves on its device, and why the others are not measured
    (what vLLM refuses to build is reported, not raised: the rest of the benchmark still runs)."""
    if args.no_vllm:
        return [], {}
    python = vllm_python(args.vllm_python)
    if python is None:
        console.print(f"[yellow]measuring without vLLM: no Python with vLLM ({escape(HOW_TO_GET_VLLM)})[/]")
        return [], {"vllm": "no Python with vLLM"}
    platform_name = vllm_platform(python)
    context = max(512, -(-(max(len(p.ids) for p in prompts) + args.max_new_tokens + args.block_size + 1) // 64) * 64)
    # float32 like ours on CPU; no prefix cache (our engine has none: every repeat prefills its prompt whole)
    base = {"dtype": str(target.dtype).removeprefix("torch."), "max_model_len": min(context, target.max_context),
            "max_num_seqs": max(8, len(prompts)), "enforce_eager": args.vllm_eager, "seed": 0,
            "disable_log_stats": False, "enable_prefix_caching": False}
    mode = "eager" if args.vllm_eager else "compiled"
    log.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"starting vLLM ({platform_name}, {mode}) workers; their log: {log}", highlight=False, markup=False)
    wanted = [("vllm-ar", f"vLLM {platform_name} ({mode}), autoregressive", base, None)]
    skipped = {}
    for name, path in drafts.items():
        try:
            served = read_served_draft(speculators_export(path))
            reason = refusal(served, platform_name)
        except DsparkError as exc:
            reason = str(exc)
        if reason:
            skipped[f"vllm-{name}"] = reason
            continue
        gamma = min(args.block_size, served.gamma)
        speculative = {"model": str(served.export), "method": served.algorithm, "num_speculative_tokens": gamma}
        wanted.append((f"vllm-{name}", f"vLLM {platform_name} ({mode}), {served.algorithm} export, {gamma} drafts per "
                                       f"step", {**base, "speculative_config": speculative}, str(served.export)))
    methods = []
    for name, description, llm_kwargs, source in wanted:
        try:
            methods.append(VllmMethod(name, description, python=python, model=str(target.snapshot.path),
                                      llm_kwargs=llm_kwargs, eos=target.eos_token_ids, log=log,
                                      speculative=source is not None, source=source))
        except DsparkError as exc:
            skipped[name] = str(exc)
    for name, reason in skipped.items():
        console.print(f"[yellow]not measured: {name}: {escape(reason)}[/]")
    return methods, skipped


# ---- measuring -------------------------------------------------------------------------------------------
def measure(methods: list, prompts: list[EvalPrompt], max_new_tokens: int, repeats: int) -> dict[str, list[list[Run]]]:
    """runs[method][prompt] = that method's runs of that prompt (one per repeat)."""
    warm = prompts[0].ids
    for method in methods:  # first calls pay for lazy initialisation (kernels, imports, allocator)
        method.decode(warm, min(8, max_new_tokens))
    runs: dict[str, list[list[Run]]] = {method.name: [] for method in methods}
    for index, prompt in enumerate(prompts):
        order = methods[index % len(methods):] + methods[: index % len(methods)]  # rotate who goes first
        for method in methods:
            runs[method.name].append([])
        for _ in range(repeats):
            for method in order:
                runs[method.name][-1].append(method.decode(prompt.ids, max_new_tokens))
        rates = "  ".join(f"{m.name} {_rate(runs[m.name][-1]):.1f}" for m in methods)
        console.print(f"prompt {index + 1}/{len(prompts)} ({prompt.domain}, {len(prompt.ids)} tokens, "
                      f"{len(runs[AR][-1][0].tokens)} generated): tok/s {rates}", highlight=False, markup=False,
                      soft_wrap=True)
    return runs


def measure_batched(methods: list, prompts: list[EvalPrompt], max_new_tokens: int,
                    repeats: int) -> dict[str, list[BatchRun]]:
    """runs[method] = its decodes of all prompts as one batch (one per repeat), for the methods that take batches
    (transformers' assisted generation takes one request only)."""
    batchable = [m for m in methods if not (isinstance(m, TransformersMethod) and m.options)]
    ids = [p.ids for p in prompts]
    for method in batchable:  # warm-up at a batch shape
        method.decode_batch(ids[:2], min(8, max_new_tokens))
    runs: dict[str, list[BatchRun]] = {m.name: [] for m in batchable}
    for repeat in range(repeats):
        for method in batchable[repeat % len(batchable):] + batchable[: repeat % len(batchable)]:
            runs[method.name].append(method.decode_batch(ids, max_new_tokens))
    console.print("batch of all prompts: tok/s " + "  ".join(
        f"{name} {sum(len(t) for r in rs for t in r.outputs) / sum(r.seconds for r in rs):.1f}"
        for name, rs in runs.items()), highlight=False, markup=False, soft_wrap=True)
    return runs


def summarize_batched(runs: dict[str, list[BatchRun]], single: dict[str, dict],
                      reference: list[list[int]], prompts: list[EvalPrompt]) -> dict[str, dict]:
    """Per method: tokens/s of the batch, speed-ups over ours-ar's and hf-generate's batch and over the method's
    own single-request rate, and on how many prompts the output equals ours-ar's single-request output."""
    results = {}
    for name, rs in runs.items():
        tokens = sum(len(t) for r in rs for t in r.outputs)
        seconds = sum(r.seconds for r in rs)
        same = [all(r.outputs[i] == ref for r in rs) for i, ref in enumerate(reference)]
        rate = tokens / seconds if seconds else None
        results[name] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": rate,
                         "speedup_vs_single_request": rate / single[name]["tokens_per_s"]
                         if rate and single[name]["tokens_per_s"] else None,
                         "identical_to_ours_ar": sum(same),
                         "differs_from_ours_ar": [p.id for p, ok in zip(prompts, same) if not ok]}
    for result in results.values():
        for base, key in ((AR, "speedup_vs_ours_ar"), (HF, "speedup_vs_hf_generate")):
            base_rate = results.get(base, {}).get("tokens_per_s")
            result[key] = result["tokens_per_s"] / base_rate if result["tokens_per_s"] and base_rate else None
    return results


def _rate(runs: list[Run]) -> float:
    seconds = sum(r.seconds for r in runs)
    return sum(len(r.tokens) for r in runs) / seconds if seconds else 0.0


def summarize(methods: list, runs: dict[str, list[list[Run]]], prompts: list[EvalPrompt]) -> dict[str, dict]:
    """Per method: totals, tokens/s, speed-ups, τ, draft/verify ms per round, efficiency, equality counts."""
    results: dict[str, dict] = {}
    for method in methods:
        flat = [run for per_prompt in runs[method.name] for run in per_prompt]
        tokens, seconds = sum(len(r.tokens) for r in flat), sum(r.seconds for r in flat)
        forwards = None if any(r.forwards is None for r in flat) else sum(r.forwards for r in flat)
        timed = sum(r.timed_rounds for r in flat)
        reference = [per_prompt[0].tokens for per_prompt in runs[AR]]
        hf_reference = [per_prompt[0].tokens for per_prompt in runs[HF]]
        same = [all(r.tokens == ref for r in rs) for rs, ref in zip(runs[method.name], reference)]
        same_hf = [all(r.tokens == ref for r in rs) for rs, ref in zip(runs[method.name], hf_reference)]
        results[method.name] = {
            "description": method.description,
            "speculative": method.speculative,
            "source": method.source,
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds else None,
            "target_forwards": forwards,
            "tau": tokens / forwards if method.speculative and forwards else None,
            "draft_ms_per_round": sum(r.draft_ms for r in flat) / timed if timed and method.speculative else None,
            "verify_ms_per_round": sum(r.verify_ms for r in flat) / timed if timed else None,
            "identical_to_ours_ar": sum(same),
            "identical_to_hf_generate": sum(same_hf),
            "differs_from_ours_ar": [p.id for p, ok in zip(prompts, same) if not ok],
        }
    for result in results.values():
        for base, key in ((AR, "speedup_vs_ours_ar"), (HF, "speedup_vs_hf_generate")):
            rate, base_rate = result["tokens_per_s"], results[base]["tokens_per_s"]
            result[key] = rate / base_rate if rate and base_rate else None
        result["efficiency"] = (result["speedup_vs_ours_ar"] / result["tau"]
                                if result["tau"] and result["speedup_vs_ours_ar"] else None)
    return results


# ---- reporting -------------------------------------------------------------------------------------------
COLUMNS = ("method", "tokens", "tok/s", "vs ours-ar", "vs hf-generate", "τ", "efficiency", "draft ms/round",
           "verify ms/round", "= ours-ar", "= hf-generate")


def _cells(name: str, r: dict, prompts: int) -> list[str]:
    def fmt(value, pattern="{:.2f}"):
        return "–" if value is None else pattern.format(value)

    return [name, str(r["tokens"]), fmt(r["tokens_per_s"], "{:.1f}"), fmt(r["speedup_vs_ours_ar"], "{:.2f}x"),
            fmt(r["speedup_vs_hf_generate"], "{:.2f}x"), fmt(r["tau"]), fmt(r["efficiency"]),
            fmt(r["draft_ms_per_round"], "{:.1f}"), fmt(r["verify_ms_per_round"], "{:.1f}"),
            f"{r['identical_to_ours_ar']}/{prompts}", f"{r['identical_to_hf_generate']}/{prompts}"]


BATCH_COLUMNS = ("method", "tokens", "tok/s", "vs ours-ar", "vs hf-generate", "vs its single requests", "= ours-ar")


def _batch_cells(name: str, r: dict, prompts: int) -> list[str]:
    def fmt(value, pattern="{:.2f}x"):
        return "–" if value is None else pattern.format(value)

    return [name, str(r["tokens"]), fmt(r["tokens_per_s"], "{:.1f}"), fmt(r["speedup_vs_ours_ar"]),
            fmt(r["speedup_vs_hf_generate"]), fmt(r["speedup_vs_single_request"]),
            f"{r['identical_to_ours_ar']}/{prompts}"]


def markdown(payload: dict) -> str:
    s, machine = payload["settings"], payload["machine"]
    lines = [f"# Decoding benchmark: {payload['target']} on {payload['device']}", "",
             f"`{payload['command']}`", "",
             f"{s['prompts']} prompts of `{s['suite']}` ({', '.join(f'{d}: {n}' for d, n in payload['domains'].items())}), "
             f"chat template, greedy, at most {s['max_new_tokens']} new tokens, all stopping at EOS, "
             f"{s['repeats']} run(s) per prompt and method, interleaved prompt by prompt. Recorded "
             f"{payload['recorded_at']}; code {payload['code_version']} at {payload['git_commit'] or 'unknown commit'}"
             f"{' (dirty)' if payload.get('dirty') else ''}; {machine['description']}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name in payload["methods"]:
        lines.append("| " + " | ".join(_cells(name, payload["results"][name], s["prompts"])) + " |")
    batched = payload.get("batched", {}).get("results") or {}
    if batched:
        lines += ["", f"All {s['prompts']} prompts as one batch (`= ours-ar`: equal to ours-ar's single-request "
                  "output):", "", "| " + " | ".join(BATCH_COLUMNS) + " |", "|" + "---|" * len(BATCH_COLUMNS)]
        for name in payload["batched"]["methods"]:
            lines.append("| " + " | ".join(_batch_cells(name, batched[name], s["prompts"])) + " |")
    lines += ["", "Speed-ups are ratios of tokens/s (all generated tokens over all seconds) measured in the same "
              "process. τ = generated tokens per target forward pass (verification round); efficiency = speed-up "
              "over ours-ar / τ. `= ours-ar`: prompts whose output equals ours-ar's token for token.", "",
              "| method | what |", "|---|---|"]
    for name in payload["methods"]:
        result = payload["results"][name]
        source = f" ({result['source']})" if result["source"] else ""
        lines.append(f"| {name} | {result['description']}{source} |")
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    cpus = os.cpu_count()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    description = (f"{name}, {cpus} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
                   f"{platform.system()} {platform.release()}")
    return {"device_name": name, "cpu_count": cpus, "description": description}


def rows(payload: dict, recorded_at: datetime) -> list[DecodingBenchmarkRow]:
    """The result's numbers as long-form rows of the decoding_benchmarks table."""
    s = payload["settings"]
    shared = DecodingBenchmarkRow(
        recorded_at=recorded_at, run_id=payload["run_id"], machine=payload["machine"]["description"],
        code_version=payload["code_version"], git_commit=payload["git_commit"], target=payload["target"],
        revision=payload["revision"], device=payload["device"], dtype=payload["dtype"], suite=s["suite"], method="",
        prompts=s["prompts"], max_new_tokens=s["max_new_tokens"], metric="")
    metrics = ("tokens_per_s", "speedup_vs_ours_ar", "speedup_vs_hf_generate", "tau", "efficiency",
               "draft_ms_per_round", "verify_ms_per_round", "identical_to_ours_ar", "identical_to_hf_generate",
               "seconds", "target_forwards")
    single = [replace(shared, method=name, metric=metric, value=float(result[metric]), n=result["tokens"])
              for name, result in payload["results"].items() for metric in metrics if result[metric] is not None]
    batch_metrics = ("tokens_per_s", "speedup_vs_ours_ar", "speedup_vs_hf_generate", "speedup_vs_single_request",
                     "identical_to_ours_ar", "seconds")
    batched = [replace(shared, method=f"{name}@batch{s['prompts']}", metric=metric, value=float(result[metric]),
                       n=result["tokens"])
               for name, result in (payload.get("batched", {}).get("results") or {}).items()
               for metric in batch_metrics if result[metric] is not None]
    return single + batched


# ---- main ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m", help="target model spec (default: the packaged SmolLM2)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--suite", default="heldout-v1", help="built-in evaluation suite the prompts come from")
    parser.add_argument("--prompts", type=int, default=6, help="prompts, spread evenly over the suite's domains")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per prompt and method")
    parser.add_argument("--block-size", type=int, default=DEFAULT_DECODE_BLOCK_SIZE,
                        help="most drafts our engine verifies per round (pass the draft's γ on a GPU)")
    parser.add_argument("--prompt-lookup-tokens", type=int, default=10,
                        help="transformers' prompt_lookup_num_tokens (10: the value its documentation uses)")
    parser.add_argument("--assistant-layers", type=int, default=None,
                        help="decoder layers of the truncated assistant (default: a quarter of the target's)")
    parser.add_argument("--assistant-tokens", type=int, default=None,
                        help="the assistant's num_assistant_tokens (default: transformers' own, 20, with its "
                             "confidence stop)")
    parser.add_argument("--drafter", action="append", default=[], metavar="NAME=PATH",
                        help="a trained draft (checkpoint or export directory); repeatable")
    parser.add_argument("--no-default-drafters", action="store_true",
                        help="do not add the current exports of `make run` under $DSPARK_HOME")
    parser.add_argument("--no-vllm", action="store_true", help="measure without vLLM")
    parser.add_argument("--vllm-python", default=None,
                        help="a Python with vLLM (default: $DSPARK_VLLM_PYTHON, else the project's .venv-vllm)")
    parser.add_argument("--vllm-eager", action="store_true",
                        help="vLLM without torch.compile (starts faster, decodes slower)")
    parser.add_argument("--no-batched", action="store_true", help="skip the pass that decodes all prompts as one batch")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default: benchmarks/results/decoding-<device>.json); a .md report beside it")
    parser.add_argument("--db", type=Path, default=None, help="metrics store: DuckDB file or measurement-log directory (default: $DSPARK_METRICS, else $DSPARK_HOME/metrics.duckdb)")
    parser.add_argument("--no-record", action="store_true", help="write no database rows")
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.max_new_tokens < 1 or args.repeats < 1 or args.block_size < 1:
        parser.error("--prompts, --max-new-tokens, --repeats and --block-size must be at least 1")

    recorded_at = now_utc()
    command = shlex.join(["python", "benchmarks/bench_decoding.py", *(sys.argv[1:] if argv is None else argv)])
    torch.manual_seed(0)
    target = load_target(args.target, device=args.device, dtype=args.dtype)
    if args.assistant_layers is not None and not 1 <= args.assistant_layers <= target.num_layers:
        parser.error(f"--assistant-layers must be between 1 and {target.num_layers} for {target.spec}")
    explicit = _drafter_options(args.drafter)
    drafts = dict(explicit)
    if not args.no_default_drafters:
        for algorithm, path in current_exports(target.spec).items():
            if algorithm not in drafts and path not in drafts.values():
                drafts[algorithm] = path
    out = args.out or RESULTS / f"decoding-{target.device.type}.json"
    console.print(f"target {target.spec} ({target.num_layers} layers) on {target.device} ({target.dtype}), "
                  f"torch threads {torch.get_num_threads()}, home {dspark_home()}", highlight=False, markup=False)

    records = load_suite(args.suite).selected(args.prompts).records
    prompts = eval_prompts(target, records)
    for prompt in prompts:
        target.check_prompt_length(len(prompt.ids), args.max_new_tokens)
    methods, assistant_layers = build_methods(target, args, drafts, set(explicit))
    vllm, vllm_skipped = build_vllm_methods(target, args, drafts, prompts,
                                            dspark_home() / "serving" / "logs" / "bench_decoding-vllm.log")
    methods += vllm
    for method in methods:
        console.print(f"  {method.name:<20} {method.description}{f'  ({method.source})' if method.source else ''}",
                      highlight=False, markup=False)

    started = time.perf_counter()
    try:
        runs = measure(methods, prompts, args.max_new_tokens, args.repeats)
        batched_runs = ({} if args.no_batched or len(prompts) < 2
                        else measure_batched(methods, prompts, args.max_new_tokens, args.repeats))
    finally:
        for method in vllm:
            method.close()
    results = summarize(methods, runs, prompts)
    batched = summarize_batched(batched_runs, results, [per_prompt[0].tokens for per_prompt in runs[AR]], prompts)

    table = Table(title=f"{target.spec} on {target.device} ({target.dtype}): {len(prompts)} prompts of {args.suite}, "
                        f"greedy, ≤{args.max_new_tokens} new tokens, {args.repeats} run(s) each")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, result in results.items():
        table.add_row(*_cells(name, result, len(prompts)))
    console.print(table)
    if batched:
        table = Table(title=f"the {len(prompts)} prompts as one batch")
        for column in BATCH_COLUMNS:
            table.add_column(column, justify="left" if column == "method" else "right")
        for name, result in batched.items():
            table.add_row(*_batch_cells(name, result, len(prompts)))
        console.print(table)
    differing = {name: r["differs_from_ours_ar"] for name, r in results.items() if r["differs_from_ours_ar"]}
    differing.update({f"{name} (batch)": r["differs_from_ours_ar"] for name, r in batched.items()
                      if r["differs_from_ours_ar"]})
    if differing:
        console.print(f"[yellow]outputs that differ from ours-ar:[/] {escape(str(differing))}", highlight=False)

    prov = provenance()
    domains: dict[str, int] = {}
    for prompt in prompts:
        domains[prompt.domain] = domains.get(prompt.domain, 0) + 1
    payload = {
        "benchmark": "bench_decoding", "command": command, "recorded_at": recorded_at.isoformat(),
        **prov, "machine": {**prov["machine"], **machine(target.device)},
        "target": target.spec, "revision": target.revision, "device": str(target.device), "dtype": str(target.dtype),
        "settings": {"suite": args.suite, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                     "repeats": args.repeats, "block_size": args.block_size,
                     "prompt_lookup_tokens": args.prompt_lookup_tokens, "assistant_layers": assistant_layers,
                     "assistant_tokens": args.assistant_tokens, "vllm_eager": args.vllm_eager},
        "domains": domains,
        "prompts": [{"id": p.id, "domain": p.domain, "prompt_tokens": len(p.ids),
                     "generated": {name: [len(r.tokens) for r in runs[name][i]] for name in runs},
                     "seconds": {name: [r.seconds for r in runs[name][i]] for name in runs}}
                    for i, p in enumerate(prompts)],
        "methods": list(results),  # in the order measured and shown (the file's keys are sorted)
        "results": results,
        "batched": {"methods": list(batched), "results": batched},
        "vllm": {m.name: {k: v for k, v in m.resolved.items() if k != "ready"} for m in vllm},
        "not_measured": vllm_skipped,
        "measured_s": time.perf_counter() - started,
    }
    run_id = measurement_key(benchmark="bench_decoding", recorded_at=payload["recorded_at"], command=command,
                             machine=payload["machine"]["description"], git_commit=payload["git_commit"])
    payload["run_id"] = run_id
    write_json_atomic(out, payload)
    report = out.with_suffix(".md")
    report.write_text(markdown(payload))
    console.print(f"wrote {out} and {report}", markup=False)
    if not args.no_record:
        store = open_metrics_store(args.db)
        written = record_decoding_benchmark(store, run_id, rows(payload, recorded_at))
        console.print(f"recorded {written} rows (run {run_id}) in table decoding_benchmarks of {store.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
