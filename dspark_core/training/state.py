"""Resumable training state: model, optimizer, data position and RNG, saved atomically as safetensors + JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dspark_core.paths import atomic_directory, recover_directory

STATE_FILE = "state.json"


def save_training_state(directory: Path, model, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                        progress: dict) -> None:
    """Replace `directory` with the current state; a crash at any point leaves the previous state intact."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value):
                    tensors[f"optim.{names[id(param)]}.{key}"] = value.detach().cpu().contiguous()
    tensors["rng.generator"] = generator.get_state()
    with atomic_directory(directory, replace=True) as tmp:
        save_file(tensors, str(tmp / "tensors.safetensors"))
        (tmp / STATE_FILE).write_text(json.dumps(progress, indent=2, sort_keys=True))


def load_training_state(directory: Path, model, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict:
    recover_directory(directory)
    tensors = load_file(str(directory / "tensors.safetensors"))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, field = key[len("optim."):].rsplit(".", 1)
            param = params[name]
            optimizer.state.setdefault(param, {})[field] = value.to(param.device)
    generator.set_state(tensors["rng.generator"])
    return json.loads((directory / STATE_FILE).read_text())
