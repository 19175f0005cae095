"""Stage 1, prompts: collect a dataset's prompts (self-generated, a JSONL file or a Hugging Face dataset),
deduplicate them and split train/validation by content hash. Reused while source and settings are unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dspark_core.data import layout
from dspark_core.data.prompts import read_prompt_file
from dspark_core.data.sources import PromptsConfig, prepare_prompt_file, prompt_rounds
from dspark_core.evaluation.suites import SUITES, load_suite
from dspark_core.models.target import TargetModel

__all__ = ["PromptsConfig", "PromptsReport", "prepare_prompts"]


@dataclass
class PromptsReport:
    path: Path
    dataset: str
    source: str
    #: True when the prompt file was already there from the same source and settings
    reused: bool
    counts: dict[str, int]
    domains: dict[str, int]
    #: (split, first user turn) of the first few prompts
    preview: list[tuple[str, str]]
    #: malformed lines that were skipped, with file and line
    malformed: list[str] = field(default_factory=list)
    summary: str = ""
    #: a growing dataset's rounds (seed, added, dropped, total per round); empty for one written in one go
    rounds: list[dict] = field(default_factory=list)


def prepare_prompts(config: PromptsConfig, target: Callable[[], TargetModel] | None = None) -> PromptsReport:
    """Write (or reuse, or with `config.grow` add to) `data/<dataset>/prompts.jsonl`. `target` is called only
    when the model writes the prompts itself (source 'self'). A grown dataset never takes in a prompt of the
    built-in evaluation suites."""
    path = layout.prompts_path(config.dataset)
    exclude = frozenset(r.id for name in SUITES for r in load_suite(name).records) if config.grow else frozenset()
    counts, load = prepare_prompt_file(path, config, target, exclude=exclude)
    pairs = read_prompt_file(path)
    domains: dict[str, int] = {}
    for record, _ in pairs:
        domains[record.source] = domains.get(record.source, 0) + 1
    preview = [(split, record.user_turns[0][:120]) for record, split in pairs[:5]]
    rounds = prompt_rounds(path) if config.grow else []
    summary = "reused" if load is None else load.summary()
    if rounds:
        last = rounds[-1]
        summary = (f"round {last['round']}: {last['added']} new prompts (seed {last['seed']}), {last['dropped']} "
                   f"dropped at the cap, {last['total']} in all; {summary}")
    return PromptsReport(path=path, dataset=config.dataset, source=config.source_or_default, reused=load is None,
                         counts=counts, domains=dict(sorted(domains.items())), preview=preview,
                         malformed=[] if load is None else list(load.malformed),
                         summary=summary, rounds=rounds)
