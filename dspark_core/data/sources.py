"""One entry for every prompt source: a JSONL file, a Hugging Face dataset (`hf:NAME`), or `self` (prompts
the target writes itself), and the prompt file of a dataset written from it (reused while unchanged)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from dspark_core.data.layout import check_dataset_name
from dspark_core.data.prompts import (
    LoadReport,
    PromptRecord,
    deduplicate,
    load_hf_dataset,
    read_jsonl,
    read_prompt_file,
    write_prompts,
)
from dspark_core.data.selfgen import SelfGenerationConfig, check_domains, self_generated_prompts
from dspark_core.errors import DsparkError
from dspark_core.models.target import TargetModel
from dspark_core.paths import write_json_atomic
from dspark_core.schemas import FileShapeError, PromptRoundsFile, PromptSettingsFile, read_json
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
    grow: bool = setting(False, "Each preparation adds new prompts to the dataset instead of writing it anew (source "
                                "'self': `count` more, from the next seed); duplicates and evaluation-suite prompts "
                                "are left out, the split stays by content hash")
    max_prompts: int | None = setting(None, "With grow: the most prompts the dataset holds; empty: no cap", min=1)
    at_cap: str = setting("stop", "With grow, at max_prompts: 'stop' (add no more) or 'drop-oldest' (the oldest "
                                  "prompts make room for new ones)", choices=("stop", "drop-oldest"))

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


def _source_settings(config: PromptsConfig) -> dict:
    """The settings a prompt file was written from, as JSON sees them (tuples become lists, so that the stored
    copy compares equal); an edited source file is a new source."""
    settings = json.loads(json.dumps({**asdict(config), "source": config.source_or_default}))
    source = Path(config.source_or_default)
    if source.is_file():
        settings["source_sha256"] = hashlib.sha256(source.read_bytes()).hexdigest()
    return settings


def prepare_prompt_file(path: Path, config: PromptsConfig, target: Callable[[], TargetModel] | None = None, *,
                        exclude: frozenset[str] = frozenset()) -> tuple[dict[str, int], LoadReport | None]:
    """Write `path` (prompts with their split) from `config`, or reuse it when it was written from the same
    source and settings (recorded next to it); with `config.grow`, add to it (`grow_prompt_file`). Prompts whose
    id is in `exclude` (an evaluation suite's) are left out of a grown file. Returns (counts per split, load
    report; None when reused)."""
    if config.grow:
        return grow_prompt_file(path, config, target, exclude=exclude)
    settings = _source_settings(config)
    settings_path = path.with_name(path.stem + ".settings.json")
    if path.exists() and settings_path.exists() and _read_settings(settings_path) == settings:
        counts = {"train": 0, "validation": 0}
        for _, split in read_prompt_file(path):
            counts[split] += 1
        return counts, None
    records, report = collect_prompts(config, target)
    settings_path.unlink(missing_ok=True)  # a crash between the two writes must not leave a stale match
    counts = write_prompts(records, path, config.validation_fraction)
    write_json_atomic(settings_path, settings)
    return counts, report


#: settings that may change from one round of a growing dataset to the next without starting it anew
_REDO = ("the record of a growing dataset's rounds is damaged: restore it, or delete it and the prompt file to "
         "start the dataset anew")
_GROWTH_SETTINGS = ("seed", "count", "limit", "grow", "max_prompts", "at_cap", "on_error")


def grow_prompt_file(path: Path, config: PromptsConfig, target: Callable[[], TargetModel] | None = None, *,
                     exclude: frozenset[str] = frozenset()) -> tuple[dict[str, int], LoadReport]:
    """One round of a growing dataset: collect prompts (source 'self': from seed `config.seed` + the round's
    number, so each round writes new ones), keep those neither in the file already nor in `exclude`, append them,
    and apply the cap. `<stem>.rounds.json` records the source settings and every round (seed, added, dropped,
    total); a file written from other source settings, or without rounds, starts anew."""
    rounds_path = path.with_name(path.stem + ".rounds.json")
    settings = {key: value for key, value in _source_settings(config).items() if key not in _GROWTH_SETTINGS}
    history = read_json(rounds_path, PromptRoundsFile, fix=_REDO) if rounds_path.exists() and path.exists() else None
    written_once = path.with_name(path.stem + ".settings.json")
    if history is None and path.exists() and written_once.exists() and {
            key: value for key, value in _read_settings(written_once).items()
            if key not in _GROWTH_SETTINGS} == settings:  # a file written in one go from this source: its round 0
        existing = [record for record, _ in read_prompt_file(path)]
        rounds = [{"round": 0, "seed": _read_settings(written_once)["seed"], "added": len(existing),
                   "dropped": 0, "total": len(existing), "at": None}]
    elif history is None or history.get("settings") != settings:
        existing, rounds = [], []
    else:
        existing, rounds = [record for record, _ in read_prompt_file(path)], list(history["rounds"])
    seed = config.seed + len(rounds)
    cap = config.max_prompts
    if cap is not None and len(existing) >= cap and config.at_cap == "stop":
        report = LoadReport(kept=0)
        new = []
    else:
        collected, report = collect_prompts(replace(config, seed=seed), target)
        known = {record.id for record in existing} | set(exclude)
        new = [record for record in collected if record.id not in known]
        report.duplicates += len(collected) - len(new)
    combined = existing + new
    if cap is not None and len(combined) > cap:  # 'stop' keeps what is there, 'drop-oldest' what is newest
        combined = combined[:cap] if config.at_cap == "stop" else combined[-cap:]
    kept = {record.id for record in combined}
    added = sum(record.id in kept for record in new)
    report.kept = added
    written_once.unlink(missing_ok=True)  # no longer a file written in one go
    counts = write_prompts(combined, path, config.validation_fraction)
    rounds.append({"round": len(rounds), "seed": seed, "added": added, "dropped": len(existing) + added - len(combined),
                   "total": len(combined), "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_json_atomic(rounds_path, {"settings": settings, "rounds": rounds})
    return counts, report


def prompt_rounds(path: Path) -> list[dict]:
    """The rounds a growing dataset's prompt file went through (empty for a file written in one go)."""
    rounds_path = path.with_name(path.stem + ".rounds.json")
    return read_json(rounds_path, PromptRoundsFile, fix=_REDO)["rounds"] if rounds_path.exists() else []


def _read_settings(path: Path) -> dict:
    """The settings a prompt file was written from in one go; a damaged record matches no settings, so the file
    is written again."""
    try:
        return read_json(path, PromptSettingsFile, fix="")
    except FileShapeError:
        return {"seed": None}
