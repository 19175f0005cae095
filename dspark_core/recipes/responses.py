"""Stage 2, responses: the target answers its dataset's prompts itself (self-distillation), resumably."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dspark_core.data import layout
from dspark_core.data.prompts import read_prompt_file
from dspark_core.data.regenerate import RegenerationConfig, regenerate_responses
from dspark_core.distributed import World
from dspark_core.errors import DsparkError
from dspark_core.models.target import TargetModel
from dspark_core.paths import directory_mib

__all__ = ["RegenerationConfig", "ResponsesReport", "generate_responses"]


@dataclass
class ResponsesReport:
    path: Path
    dataset: str
    conversations: int
    splits: dict[str, int]
    response_tokens: int
    sampling: dict
    skipped_too_long: list[str]
    size_mib: float
    seconds: float
    #: the server that answered (URL, model, how it was checked) or None when the target answered here
    server: dict | None = None

    @property
    def mean_response_tokens(self) -> float:
        return self.response_tokens / max(self.conversations, 1)


def generate_responses(target: TargetModel, dataset: str, config: RegenerationConfig, *,
                       progress: bool = True, world: World | None = None) -> ResponsesReport:
    """Answer every prompt of `dataset` into `data/<dataset>/<target>/responses/` (a rerun resumes). Under a
    process group (`world`, by default the one this process joined) every rank calls it and answers its share
    of the batches; every rank gets the same report. With `config.server` a server answers (one process)."""
    prompts = layout.prompts_path(dataset)
    if not prompts.exists():
        raise DsparkError(f"dataset {dataset!r} has no prompts yet ({prompts}); run `dspark data prompts` first")
    out = layout.responses_dir(dataset, target.spec)
    manifest = regenerate_responses(target, read_prompt_file(prompts), out, config, progress=progress, world=world)
    return ResponsesReport(
        path=out, dataset=dataset, conversations=manifest["conversations"], splits=manifest["splits"],
        response_tokens=manifest["response_tokens"], sampling=manifest["settings"]["sampling"],
        skipped_too_long=list(manifest["skipped_too_long"]), size_mib=directory_mib(out),
        seconds=float(manifest.get("seconds", 0.0)), server=manifest.get("server"),
    )
