"""Warm starts: a training run that begins from an existing draft (a checkpoint or an export) instead of random
weights, so that compute spent on earlier runs is kept.

What carries over: every trained weight and the draft vocabulary. What does not: the optimizer state (AdamW's
moments belong to the parent's data and to the end of its learning-rate schedule, where the rate was near zero;
a continuation warms them up again under its own warmup and cosine schedule) and the frozen embedding and LM
head, which are always the target's, so a draft can grow from a parent trained for another base model of the
same shapes (a fine-tuned or quantized variant).

A continuation keeps its parent's module shape (depth, block size, head, vocabulary size, target layers):
`parent_settings` gives them as defaults that explicit settings override, and a parent whose shape differs
from the run's is refused with the first difference. The run records its parent (`lineage`) and the steps,
sequences and tokens trained over the whole line of drafts it grew from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dspark_core.drafters.base import DraftModule
from dspark_core.drafters.checkpoint import load_draft, read_draft_config, shape_mismatch, weights_sha256
from dspark_core.errors import DsparkError
from dspark_core.paths import settled_directory

__all__ = ["Parent", "SHAPE_SETTINGS", "load_parent_weights", "parent_settings", "read_parent", "shape_conflict"]

#: TrainConfig settings that fix the module's shape: a continuation takes its parent's unless given explicitly
SHAPE_SETTINGS = ("algorithm", "num_layers", "block_size", "head", "head_rank", "head_vocab", "draft_vocab_size",
                  "mask_token", "qk_norm", "anchor_state", "sample_from_anchor")

#: module fields fitted after training (the confidence head's calibration): they belong to the parent's weights,
#: so a continuation starts without them and is calibrated again
CALIBRATION_FIELDS = ("confidence_temperatures", "confidence_shifts")


@dataclass(frozen=True)
class Parent:
    """The draft a run starts from: its directory and checkpoint config (an export's is its source's)."""

    path: Path
    config: dict

    @property
    def training(self) -> dict:
        return self.config.get("training") or {}

    @property
    def cumulative(self) -> dict[str, int]:
        """Steps, sequences and tokens trained over the parent's whole line (its own run for a first draft)."""
        training = self.training
        steps = int(training.get("steps_done") or training.get("steps") or 0)
        sequences = steps * int(training.get("batch_size") or 0)
        return {"steps": int(training.get("cumulative_steps", steps)),
                "sequences": int(training.get("cumulative_sequences", sequences)),
                "tokens": int(training.get("cumulative_tokens", training.get("tokens_trained", 0)))}

    def lineage(self) -> dict:
        """What a child records about its parent."""
        return {"path": str(self.path), "weights_sha256": weights_sha256(self.path),
                "algorithm": self.config["algorithm"], "target": self.config.get("target"),
                "target_revision": self.config.get("target_revision"), "cumulative": self.cumulative,
                "generation": int(self.training.get("generation", 0))}


def read_parent(path: str | Path) -> Parent:
    """The draft at `path`, checked to be readable (a checkpoint or an export)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DsparkError(f"cannot warm-start from {path}: no such directory; give a draft checkpoint (the `draft` "
                          f"folder of a training run) or an export")
    path = settled_directory(path)
    return Parent(path.resolve(), read_draft_config(path))


def parent_settings(parent: Parent) -> dict:
    """The parent's module shape as TrainConfig settings (its target layers included)."""
    training = parent.training
    settings = {name: training[name] for name in SHAPE_SETTINGS if name in training}
    settings["algorithm"] = parent.config["algorithm"]
    settings["draft_vocab_size"] = int(parent.config["draft_vocab_size"])
    settings["layer_ids"] = tuple(parent.config["target_layer_ids"])
    return settings


def shape_conflict(parent: Parent, settings: dict) -> str | None:
    """Why a run with TrainConfig `settings` cannot grow from `parent` (the first setting that differs from the
    parent's shape), or None."""
    for name, value in parent_settings(parent).items():
        if name in settings and settings[name] is not None and _comparable(settings[name]) != _comparable(value):
            return f"its {name} is {value!r}, the run's is {settings[name]!r}"
    return None


def _comparable(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def load_parent_weights(model: DraftModule, parent: Parent, target) -> torch.Tensor:
    """Copy `parent`'s trained weights into `model` (built for `target`, at its own precision) and return the
    parent's draft vocabulary; refuse a parent that cannot run on `target` or whose module differs."""
    if parent.config["algorithm"] != model.config.algorithm:
        raise DsparkError(f"cannot warm-start a {model.config.algorithm} draft from {parent.path}: it is a "
                          f"{parent.config['algorithm']} draft; train {parent.config['algorithm']} or start from "
                          f"scratch")
    if mismatch := shape_mismatch(parent.config, target):
        raise DsparkError(f"cannot warm-start from {parent.path} on {target.spec!r}: {mismatch}")
    source, _ = load_draft(parent.path)
    theirs, ours = source.config.to_dict(), model.config.to_dict()
    for key in sorted((set(theirs) | set(ours)) - set(CALIBRATION_FIELDS)):
        if theirs.get(key) != ours.get(key):
            raise DsparkError(f"cannot warm-start from {parent.path}: its {key} is {theirs.get(key)!r}, this run "
                              f"builds {ours.get(key)!r}; drop the option that sets it (a continuation keeps its "
                              f"parent's shape) or start from scratch")
    state = source.state_dict()
    model.load_state_dict(state, strict=True)  # copies cast to the run's precision
    return state["draft_vocab"].clone()
