"""Build a drafter from its command-line / config name: the built-in drafters or a trained draft's directory."""

from __future__ import annotations

from pathlib import Path

from dspark_core.decoding.draft_lm import DraftModelDrafter
from dspark_core.decoding.drafter import Drafter
from dspark_core.decoding.prompt_lookup import PromptLookupDrafter
from dspark_core.drafters.checkpoint import load_drafter
from dspark_core.errors import DrafterSpecError
from dspark_core.models.target import TargetModel, load_target

DRAFTER_FORMS = "none | prompt-lookup | draft-lm:MODEL_SPEC | <draft checkpoint or export directory>"


def build_drafter(value: str, target: TargetModel) -> Drafter | None:
    """`none` -> None (autoregressive); `prompt-lookup`; `draft-lm:SPEC` (same tokenizer as the target);
    a trained checkpoint or an export directory."""
    value = value.strip()
    if value in ("", "none"):
        return None
    if value == "prompt-lookup":
        return PromptLookupDrafter()
    if value.startswith("draft-lm:"):
        spec = value.split(":", 1)[1]
        if not spec:
            raise DrafterSpecError("--drafter draft-lm: needs a model spec, e.g. draft-lm:smollm2-135m")
        draft = load_target(spec, device=target.device, dtype=target.dtype)
        return DraftModelDrafter(draft, target)
    if Path(value).is_dir():
        return load_drafter(Path(value), target)
    raise DrafterSpecError(f"unknown drafter {value!r}; use one of: {DRAFTER_FORMS}")
