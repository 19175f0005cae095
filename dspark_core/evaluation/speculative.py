"""Speculative-decoding evaluation: decode held-out prompts one request at a time with a drafter and with
plain autoregressive decoding through the same engine, then summarize per (domain, context bucket).

Speed-ups are ratios measured in the same process (autoregressive first), never absolute seconds."""

from __future__ import annotations

import statistics
from typing import Callable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from dspark_core.data.chat import render_ids
from dspark_core.data.prompts import PromptRecord
from dspark_core.decoding import GenerationConfig, SamplingConfig, SpeculativeEngine
from dspark_core.decoding.drafter import Drafter
from dspark_core.decoding.metrics import RoundRecord, tau
from dspark_core.decoding.scheduler import ScheduleConfig
from dspark_core.decoding.step_cost import StepCostProfile
from dspark_core.models.target import TargetModel

#: prompt-length buckets (tokens), the `context_bucket` column of acceptance_metrics
CONTEXT_BUCKETS = ((256, "0-256"), (1024, "256-1k"), (4096, "1k-4k"), (16384, "4k-16k"))
ALL = "all"


def context_bucket(prompt_tokens: int) -> str:
    for limit, name in CONTEXT_BUCKETS:
        if prompt_tokens <= limit:
            return name
    return ">16k"


@dataclass(frozen=True)
class EvalPrompt:
    id: str
    domain: str
    ids: list[int]


def eval_prompts(target: TargetModel, records: list[PromptRecord], limit: int | None = None) -> list[EvalPrompt]:
    """Render prompt records with the target's chat template; the record's source is its domain."""
    return [EvalPrompt(r.id, r.source, render_ids(target, list(r.messages), add_generation_prompt=True))
            for r in records[:limit]]


@dataclass(frozen=True)
class EvalSettings:
    """How each prompt is decoded (the user-facing defaults live in the evaluation recipe's EvalConfig)."""

    max_new_tokens: int
    #: 0 = greedy (outputs must then equal autoregressive token for token)
    temperature: float
    block_size: int
    seed: int = 0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def generation_config(self, speculative: bool = True) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_new_tokens, sampling=SamplingConfig(temperature=self.temperature),
                                block_size=self.block_size, speculative=speculative, seed=self.seed,
                                schedule=self.schedule)


@dataclass
class PromptResult:
    prompt: EvalPrompt
    tokens: list[int]
    rounds: list[RoundRecord]
    wall_s: float
    draft_ms_per_round: float
    verify_ms_per_round: float


def decode_prompts(target: TargetModel, drafter: Drafter | None, prompts: list[EvalPrompt], settings: EvalSettings,
                   *, desc: str = "decoding", progress: bool = True,
                   step_costs: StepCostProfile | None = None) -> list[PromptResult]:
    """Decode each prompt alone (the per-request latency view). drafter=None: autoregressive. `step_costs`: the
    target's profile, which scheduled verification needs."""
    engine = SpeculativeEngine(target, drafter, step_costs=step_costs)
    config = settings.generation_config(speculative=drafter is not None)
    results = []
    for prompt in tqdm(prompts, desc=desc, disable=not progress):
        out = engine.generate([prompt.ids], config)
        results.append(PromptResult(prompt, out.outputs[0].tokens, out.outputs[0].rounds, out.stats.wall_s,
                                    out.stats.draft_ms_per_round, out.stats.verify_ms_per_round))
    return results


def mismatched_prompts(results: list[PromptResult], reference: list[PromptResult]) -> list[str]:
    """Ids of prompts whose generated tokens differ from the reference's (greedy losslessness)."""
    return [r.prompt.id for r, ref in zip(results, reference, strict=True) if r.tokens != ref.tokens]


@dataclass
class GroupSummary:
    """Acceptance and speed of one drafter on one (domain, context bucket) group of prompts."""

    domain: str
    context_bucket: str
    prompts: int
    rounds: int
    new_tokens: int
    tau: float | None
    #: per position k = 1..block: (rate, rounds it was measured on)
    prefix_accept: list[tuple[float | None, int]] = field(default_factory=list)
    cond_accept: list[tuple[float | None, int]] = field(default_factory=list)
    tokens_per_s: float = 0.0
    speedup: float | None = None
    draft_ms_per_round: float = 0.0
    verify_ms_per_round: float = 0.0


def _rates(records: list[RoundRecord], block: int, conditional: bool) -> list[tuple[float | None, int]]:
    rates = []
    for k in range(1, block + 1):
        eligible = [r for r in records if r.proposed >= k and (not conditional or r.accepted >= k - 1)]
        rates.append((sum(r.accepted >= k for r in eligible) / len(eligible) if eligible else None, len(eligible)))
    return rates


def _summary(domain: str, bucket: str, results: list[PromptResult], baseline: list[PromptResult] | None,
             block: int) -> GroupSummary:
    records = [record for r in results for record in r.rounds]
    new_tokens = sum(len(r.tokens) for r in results)
    wall = sum(r.wall_s for r in results)
    tokens_per_s = new_tokens / wall if wall else 0.0
    speedup = None
    if baseline:
        base_wall = sum(r.wall_s for r in baseline)
        base_rate = sum(len(r.tokens) for r in baseline) / base_wall if base_wall else 0.0
        speedup = tokens_per_s / base_rate if base_rate else None
    return GroupSummary(
        domain=domain, context_bucket=bucket, prompts=len(results), rounds=len(records), new_tokens=new_tokens,
        tau=tau(records), prefix_accept=_rates(records, block, False), cond_accept=_rates(records, block, True),
        tokens_per_s=tokens_per_s, speedup=speedup,
        draft_ms_per_round=statistics.mean(r.draft_ms_per_round for r in results),
        verify_ms_per_round=statistics.mean(r.verify_ms_per_round for r in results),
    )


def _grouped(results: list[PromptResult], baseline: list[PromptResult] | None, block: int,
             key: Callable[[PromptResult], tuple[str, str]]) -> list[GroupSummary]:
    """One summary per (domain, bucket) that `key` gives a result, in sorted order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for index, result in enumerate(results):
        groups.setdefault(key(result), []).append(index)
    pick = lambda rows, idx: [rows[i] for i in idx] if rows else None  # noqa: E731
    return [_summary(domain, bucket, pick(results, indices), pick(baseline, indices), block)
            for (domain, bucket), indices in sorted(groups.items())]


def summarize(results: list[PromptResult], baseline: list[PromptResult] | None, block: int) -> list[GroupSummary]:
    """One summary over everything (domain = context_bucket = 'all') first, then one per (domain, bucket)."""
    return [_summary(ALL, ALL, results, baseline, block)] + _grouped(
        results, baseline, block, lambda r: (r.prompt.domain, context_bucket(len(r.prompt.ids))))


def domain_summaries(results: list[PromptResult], baseline: list[PromptResult] | None, block: int) -> list[GroupSummary]:
    """One summary per domain, over all prompt lengths (context_bucket = 'all')."""
    return _grouped(results, baseline, block, lambda r: (r.prompt.domain, ALL))
