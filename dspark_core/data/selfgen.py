"""Self-generated prompts ("Magpie"): an instruction-tuned target writes user requests itself when
sampled right after its chat template's user-turn prefix. Fully offline; deduplicated and length-filtered.

Steered by domain, each request starts with an opening typical of the domain ("Write a Python function
that", "A store sells", ...) and the model writes the rest: the prompts then cover math, code, chat and
writing in equal shares instead of whatever the model writes most often, and carry their domain."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from tqdm.auto import tqdm

from dspark_core.data.chat import user_turn_prefix
from dspark_core.data.prompts import PromptRecord
from dspark_core.decoding import GenerationConfig, SamplingConfig, SpeculativeEngine
from dspark_core.errors import ConfigError, DsparkError
from dspark_core.models.target import TargetModel


#: openings of user requests per domain; a steered request starts with one of them
DOMAIN_OPENINGS: dict[str, tuple[str, ...]] = {
    "math": ("Solve this word problem:", "A store sells", "Calculate", "If a train travels", "What is the probability",
             "Find the value of x", "A recipe needs", "How many", "Explain step by step how to compute", "Tom has"),
    "code": ("Write a Python function that", "How do I", "Explain what this code does:", "Fix the bug in this",
             "Write a SQL query that", "What is the difference between", "Implement a", "Write a JavaScript function",
             "How can I read a file", "Refactor this function"),
    "chat": ("What are some tips for", "Can you explain", "What is the best way to", "Tell me about", "How does",
             "Why do", "Recommend", "What should I", "Help me plan", "Is it true that"),
    "writing": ("Write a short story about", "Write a poem about", "Rewrite this sentence", "Write an email to",
                "Summarize", "Write a product description for", "Draft a letter", "Give me a title for",
                "Describe", "Write a haiku about"),
}


def check_domains(domains: tuple[str, ...]) -> None:
    """A ConfigError naming the choices unless every domain is one prompts can be steered to."""
    unknown = sorted(set(domains) - set(DOMAIN_OPENINGS))
    if unknown:
        raise ConfigError(f"unknown prompt domain(s) {', '.join(unknown)}; choose from {', '.join(DOMAIN_OPENINGS)}")


@dataclass(frozen=True)
class SelfGenerationConfig:
    count: int = 64
    #: domains to steer to, in equal shares (keys of DOMAIN_OPENINGS); empty: unsteered
    domains: tuple[str, ...] = ()
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 64
    min_chars: int = 16
    max_chars: int = 400
    batch_size: int = 64
    seed: int = 0
    #: give up after count * max_attempts_factor samples (a model that rarely writes usable requests)
    max_attempts_factor: int = 6

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(self.domains))
        check_domains(self.domains)


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def _openings(config: SelfGenerationConfig, attempt: int, batch: int) -> list[tuple[str, str]]:
    """(domain, opening text) for the requests of one batch: domains in turn, openings drawn by the seed."""
    if not config.domains:
        return [("", "")] * batch
    generator = random.Random(config.seed * 1_000_003 + attempt)
    rows = []
    for i in range(batch):
        domain = config.domains[(attempt + i) % len(config.domains)]
        rows.append((domain, generator.choice(DOMAIN_OPENINGS[domain])))
    return rows


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
        openings = _openings(config, attempts, batch)
        starts = [prefix + (target.tokenizer(text, add_special_tokens=False)["input_ids"] if text else [])
                  for _, text in openings]
        result = engine.generate(
            starts, GenerationConfig(max_new_tokens=config.max_new_tokens, sampling=sampling, seed=config.seed + attempts),
        )
        attempts += batch
        for (domain, opening), output in zip(openings, result.outputs):
            written = target.decode(output.tokens).strip()
            text = f"{opening} {written}".strip() if opening and not written.startswith((",", ".", ":", "?")) \
                else f"{opening}{written}".strip()
            key = _normalized(text)
            # Only complete user turns (the model closed the turn itself) of a useful length, once each.
            if output.finish_reason != "eos" or not config.min_chars <= len(text) <= config.max_chars \
                    or key in seen or not written:
                continue
            seen.add(key)
            records.append(PromptRecord.create([("user", text)], domain or f"self:{target.spec}"))
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
