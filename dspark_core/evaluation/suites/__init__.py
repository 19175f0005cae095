"""Built-in evaluation suites written for this project (offline, never used for training).

`heldout-v1`: 120 single-turn requests, 40 each of math word problems, code tasks and open-ended chat or
writing, in the Spec-Bench `{"turns": [...], "category": ...}` shape; a record's domain is its category.
"""

from __future__ import annotations

from pathlib import Path

from dspark_core.data.prompts import PromptRecord, read_jsonl, read_prompt_file
from dspark_core.errors import DsparkError

SUITES_DIR = Path(__file__).parent
SUITES = {path.stem: path for path in sorted(SUITES_DIR.glob("*.jsonl"))}


def suite_records(name: str) -> list[PromptRecord]:
    """The prompts of built-in suite `name`, in file order."""
    if name not in SUITES:
        raise DsparkError(f"unknown evaluation suite {name!r}; built-in suites: {', '.join(SUITES)}")
    return read_jsonl(SUITES[name], on_error="raise")


def unseen_in_training(records: list[PromptRecord], training_prompts: Path) -> list[PromptRecord]:
    """`records`, after checking by content hash that none is among a dataset's prompts (any split)."""
    known = {record.id for record, _ in read_prompt_file(training_prompts)}
    overlap = [record.user_turns[0][:60] for record in records if record.id in known]
    if overlap:
        raise DsparkError(f"{len(overlap)} evaluation prompts are also training prompts in {training_prompts} "
                          f"(e.g. {overlap[0]!r}); evaluate on prompts the draft never saw")
    return records
