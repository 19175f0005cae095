"""Resumable training state: model, optimizer and data position, saved atomically as safetensors + JSON.

The state is the full (unsharded) one whatever the number of ranks that trained it, so a run may resume on
another number of ranks. Anchor sampling draws from generators seeded per step and sequence, so the data
position (step, epoch, cursor) is all the randomness a resume needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from dspark_core.paths import atomic_directory, recover_directory, save_tensors
from dspark_core.schemas import TrainingStateFile, read_json

STATE_FILE = "state.json"
DAMAGED_STATE = ("the saved training state is damaged: delete the run's state/ directory to start the run again from "
                 "step 0 (or use another output directory)")


def save_training_state(directory: Path, model_state: dict[str, torch.Tensor],
                        optimizer_state: dict[str, dict[str, torch.Tensor]], progress: dict) -> None:
    """Replace `directory` with this state; a crash at any point leaves the previous state intact."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    for name, fields in optimizer_state.items():
        for key, value in fields.items():
            if torch.is_tensor(value):
                tensors[f"optim.{name}.{key}"] = value.detach().cpu().contiguous()
    with atomic_directory(directory, replace=True) as tmp:
        save_tensors(tensors, tmp / "tensors.safetensors")
        (tmp / STATE_FILE).write_text(json.dumps(progress, indent=2, sort_keys=True))


def load_training_state(directory: Path) -> tuple[dict, dict, dict]:
    """(model state, optimizer state by parameter name, progress) as `save_training_state` wrote them."""
    recover_directory(directory)
    tensors = load_file(str(directory / "tensors.safetensors"))
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, field = key[len("optim."):].rsplit(".", 1)
            optimizer_state.setdefault(name, {})[field] = value
    return model_state, optimizer_state, read_json(directory / STATE_FILE, TrainingStateFile, fix=DAMAGED_STATE)
