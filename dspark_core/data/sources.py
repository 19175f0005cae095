"""One entry for every prompt source: a JSONL file, a Hugging Face dataset (`hf:NAME`), or `self` (prompts
the target writes itself), and the prompt file of a dataset written from it (reused while unchanged)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from dspark_core.data.layout import check_dataset_name
from dspark_core.data.prompts import (
    LoadReport, PromptRecord, deduplicate, load_hf_dataset, read_jsonl, read_prompt_file, write_prompts,
)
from dspark_core.data.selfgen import SelfGenerationConfig, check_domains, self_generated_prompts
from dspark_core.errors import DsparkError
from dspark_core.models.target import TargetModel
from dspark_core.paths import write_json_atomic
from dspark_core.settings import check_settings, setting

SOURCE_FORMS = "a .jsonl file | hf:NAME_OR_PATH | self"


@dataclass(frozen=True)
class PromptsConfig:
    """Where a dataset's prompts come from and how they are split."""

    dataset: str = setting("default", "Dataset name: a folder under $DSPARK_HOME/data")
    source: str | None = setting(None, f"Prompt source: {SOURCE_FORMS}; empty: 'self' (the model writes user "
                                       f"requests itself, offline; needs a chat template)")
    count: int = setting(192, "For source 'self': how many prompts to generate", min=1)
    domains: tuple[str, ...] = setting((), "For source 'self': steer the requests to these domains in equal shares "
                                           "(math, code, chat, writing); empty: unsteered")
    limit: int | None = setting(None, "Keep at most this many prompts (any source)", min=1)
    validation_fraction: float = setting(0.12, "Share held out from training, by content hash; evaluation decodes these", min=0, max=1)
    seed: int = setting(0, "Seed of prompt generation")
    hf_split: str = setting("train", "For hf: sources, the dataset split to read")
    prompt_column: str | None = setting(None, "For hf: sources, a plain-text prompt column")
    messages_column: str | None = setting(None, "For hf: sources, a chat-messages column")
    on_error: str = setting("skip", "Malformed lines: 'skip' (reported) or 'raise'", choices=("skip", "raise"))

    def __post_init__(self) -> None:
        check_settings(self)
        object.__setattr__(self, "domains", tuple(self.domains))
        check_domains(self.domains)
        check_dataset_name(self.dataset)

    @property
    def source_or_default(self) -> str:
        return self.source or "self"


def collect_prompts(config: PromptsConfig, target: Callable[[], TargetModel] | None = None) -> tuple[list[PromptRecord], LoadReport]:
    """Read or generate the prompts, deduplicated and limited. `target` is called only for `self`."""
    report = LoadReport()
    source = config.source_or_default
    if source == "self":
        if target is None:
            raise DsparkError("the prompt source 'self' needs a target: the instruction-tuned model that writes the prompts")
        records = self_generated_prompts(target(), SelfGenerationConfig(count=config.count, seed=config.seed,
                                                                        domains=tuple(config.domains)))
        report.read = len(records)
    elif source.startswith("hf:"):
        records = load_hf_dataset(source[3:], split=config.hf_split, prompt_column=config.prompt_column,
                                  messages_column=config.messages_column, limit=config.limit, on_error=config.on_error,
                                  report=report)
    elif source.endswith(".jsonl") or Path(source).is_file():
        records = read_jsonl(Path(source), on_error=config.on_error, report=report)
    else:
        raise DsparkError(f"unknown prompt source {source!r}; use {SOURCE_FORMS}")
    records = deduplicate(records, report)[: config.limit]
    report.kept = len(records)
    if not records:
        raise DsparkError(f"no usable prompts in {source!r} ({report.summary()}); check the source's format")
    return records, report


def prepare_prompt_file(path: Path, config: PromptsConfig,
                        target: Callable[[], TargetModel] | None = None) -> tuple[dict[str, int], LoadReport | None]:
    """Write `path` (prompts with their split) from `config`, or reuse it when it was written from the same
    source and settings (recorded next to it). Returns (counts per split, load report; None when reused)."""
    # As JSON sees them (tuples become lists), so that the stored copy compares equal.
    settings = json.loads(json.dumps({**asdict(config), "source": config.source_or_default}))
    source = Path(config.source_or_default)
    if source.is_file():  # an edited file is a new source
        settings["source_sha256"] = hashlib.sha256(source.read_bytes()).hexdigest()
    settings_path = path.with_name(path.stem + ".settings.json")
    if path.exists() and settings_path.exists() and json.loads(settings_path.read_text()) == settings:
        counts = {"train": 0, "validation": 0}
        for _, split in read_prompt_file(path):
            counts[split] += 1
        return counts, None
    records, report = collect_prompts(config, target)
    settings_path.unlink(missing_ok=True)  # a crash between the two writes must not leave a stale match
    counts = write_prompts(records, path, config.validation_fraction)
    write_json_atomic(settings_path, settings)
    return counts, report
