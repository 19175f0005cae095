"""Self-generated prompts ("Magpie"): an instruction-tuned target writes user requests itself when
sampled right after its chat template's user-turn prefix. Fully offline; deduplicated and length-filtered."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tqdm.auto import tqdm

from dspark_core.data.chat import user_turn_prefix
from dspark_core.data.prompts import PromptRecord
from dspark_core.decoding import GenerationConfig, SamplingConfig, SpeculativeEngine
from dspark_core.errors import DsparkError
from dspark_core.models.target import TargetModel


@dataclass(frozen=True)
class SelfGenerationConfig:
    count: int = 64
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 64
    min_chars: int = 16
    max_chars: int = 400
    batch_size: int = 16
    seed: int = 0
    #: give up after count * max_attempts_factor samples (a model that rarely writes usable requests)
    max_attempts_factor: int = 6


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def self_generated_prompts(target: TargetModel, config: SelfGenerationConfig, *, progress: bool = True) -> list[PromptRecord]:
    prefix = user_turn_prefix(target)
    engine = SpeculativeEngine(target)
    sampling = SamplingConfig(temperature=config.temperature, top_p=config.top_p)
    seen: set[str] = set()
    records: list[PromptRecord] = []
    attempts = 0
    bar = tqdm(total=config.count, desc="self-generating prompts", disable=not progress)
    while len(records) < config.count and attempts < config.count * config.max_attempts_factor:
        batch = min(config.batch_size, config.count * config.max_attempts_factor - attempts)
        result = engine.generate(
            [prefix] * batch,
            GenerationConfig(max_new_tokens=config.max_new_tokens, sampling=sampling, seed=config.seed + attempts),
        )
        attempts += batch
        for output in result.outputs:
            text = target.decode(output.tokens).strip()
            key = _normalized(text)
            # Only complete user turns (the model closed the turn itself) of a useful length, once each.
            if output.finish_reason != "eos" or not config.min_chars <= len(text) <= config.max_chars or key in seen:
                continue
            seen.add(key)
            records.append(PromptRecord.create([("user", text)], f"self:{target.spec}"))
            bar.update(1)
            if len(records) == config.count:
                break
    bar.close()
    if not records:
        raise DsparkError(
            f"{target.spec!r} produced no usable user requests in {attempts} samples; relax the length filters or "
            f"use a JSONL / dataset prompt source"
        )
    return records
