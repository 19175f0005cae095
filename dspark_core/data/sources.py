"""One entry point for every prompt source: a JSONL file, a Hugging Face dataset (`hf:NAME`), or `self`
(prompts the target writes itself). Used by `dspark data prompts` and the prompt_dataset asset."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from dspark_core.data.prompts import (
    LoadReport, PromptRecord, deduplicate, load_hf_dataset, read_jsonl, read_prompt_file, write_prompts,
)
from dspark_core.data.selfgen import SelfGenerationConfig, self_generated_prompts
from dspark_core.errors import DsparkError
from dspark_core.models.target import TargetModel
from dspark_core.paths import write_json_atomic

SOURCE_FORMS = "a .jsonl file | hf:NAME_OR_PATH | self"


@dataclass(frozen=True)
class PromptSource:
    source: str  # see SOURCE_FORMS
    count: int = 64  # for `self`: how many prompts to write
    limit: int | None = None  # keep at most this many prompts
    seed: int = 0
    hf_split: str = "train"
    prompt_column: str | None = None
    messages_column: str | None = None
    on_error: str = "skip"  # malformed lines: "skip" (reported) or "raise"


def collect_prompts(spec: PromptSource, target: Callable[[], TargetModel] | None = None) -> tuple[list[PromptRecord], LoadReport]:
    """Read or generate the prompts, deduplicated and limited. `target` is called only for `self`."""
    report = LoadReport()
    if spec.source == "self":
        if target is None:
            raise DsparkError("the prompt source 'self' needs a target: the instruction-tuned model that writes the prompts")
        records = self_generated_prompts(target(), SelfGenerationConfig(count=spec.count, seed=spec.seed))
        report.read = len(records)
    elif spec.source.startswith("hf:"):
        records = load_hf_dataset(spec.source[3:], split=spec.hf_split, prompt_column=spec.prompt_column,
                                  messages_column=spec.messages_column, limit=spec.limit, on_error=spec.on_error,
                                  report=report)
    elif spec.source.endswith(".jsonl") or Path(spec.source).is_file():
        records = read_jsonl(Path(spec.source), on_error=spec.on_error, report=report)
    else:
        raise DsparkError(f"unknown prompt source {spec.source!r}; use {SOURCE_FORMS}")
    records = deduplicate(records, report)[: spec.limit]
    report.kept = len(records)
    if not records:
        raise DsparkError(f"no usable prompts in {spec.source!r} ({report.summary()}); check the source's format")
    return records, report


def prepare_prompt_file(path: Path, spec: PromptSource, validation_fraction: float,
                        target: Callable[[], TargetModel] | None = None) -> tuple[dict[str, int], LoadReport | None]:
    """Write `path` (prompts with their split) from `spec`, or reuse it when it was written from the same
    source and settings (recorded next to it). Returns (counts per split, load report; None when reused)."""
    settings = {**asdict(spec), "validation_fraction": validation_fraction}
    if Path(spec.source).is_file():  # an edited file is a new source
        settings["source_sha256"] = hashlib.sha256(Path(spec.source).read_bytes()).hexdigest()
    settings_path = path.with_name(path.stem + ".settings.json")
    if path.exists() and settings_path.exists() and json.loads(settings_path.read_text()) == settings:
        counts = {"train": 0, "validation": 0}
        for _, split in read_prompt_file(path):
            counts[split] += 1
        return counts, None
    records, report = collect_prompts(spec, target)
    settings_path.unlink(missing_ok=True)  # a crash between the two writes must not leave a stale match
    counts = write_prompts(records, path, validation_fraction)
    write_json_atomic(settings_path, settings)
    return counts, report
