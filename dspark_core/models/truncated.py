"""A truncated copy of a causal LM: its first K decoder layers under its own embedding, final norm and LM head.

Such a model shares the target's tokenizer and vocabulary, so it can serve as a draft ("assistant") model with
no training at all: the simplest self-speculative baseline (an early exit of the target). The copy shares the
target's modules (no weights are duplicated); the target must stay frozen while the copy is in use.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dspark_core.errors import ConfigError
from dspark_core.models.architecture import decoder_layers

__all__ = ["truncated_copy"]


def truncated_copy(model: nn.Module, num_layers: int) -> nn.Module:
    """A new model of `model`'s class whose decoder keeps only the first `num_layers` layers.

    Every other module (token embedding, rotary embedding, final norm, LM head) is the target's own, shared, as
    are the kept layers; `config.num_hidden_layers` (and `layer_types`, where the model has it) describe the
    truncated stack. Works for any causal LM whose decoder has a `layers` list (`model.model.layers`: Llama,
    Qwen, Mistral, Gemma 3...)."""
    layers = decoder_layers(model)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if layers is None or decoder is None or getattr(model, "model", None) is not decoder:
        raise ConfigError(f"{type(model).__name__} has no `model.layers` decoder stack to truncate")
    if not 1 <= num_layers <= len(layers):
        raise ConfigError(f"cannot keep {num_layers} of {type(model).__name__}'s {len(layers)} decoder layers; "
                          f"choose 1 to {len(layers)}")

    config = copy.deepcopy(model.config)
    config.num_hidden_layers = num_layers
    if isinstance(getattr(config, "layer_types", None), (list, tuple)):
        config.layer_types = list(config.layer_types)[:num_layers]
    # Built on the meta device (no memory, no random init), then every module is replaced by the target's.
    with torch.device("meta"):
        truncated = type(model)(config)
    for name, _ in list(truncated.named_children()):
        if name != "model":
            setattr(truncated, name, getattr(model, name))
    for name, _ in list(truncated.model.named_children()):
        source = getattr(decoder, name)
        setattr(truncated.model, name, nn.ModuleList(list(source)[:num_layers]) if name == "layers" else source)
    # Non-persistent buffers registered directly on the two containers (rare) are shared as well.
    for owner, source in ((truncated, model), (truncated.model, decoder)):
        for name, _ in list(owner.named_buffers(recurse=False)):
            owner._buffers[name] = source._buffers[name]
    left = [name for name, tensor in [*truncated.named_parameters(), *truncated.named_buffers()] if tensor.is_meta]
    if left:
        raise ConfigError(f"truncating {type(model).__name__} left tensors without weights: {', '.join(left[:5])}")
    if getattr(model, "generation_config", None) is not None:
        truncated.generation_config = copy.deepcopy(model.generation_config)
    return truncated.eval().requires_grad_(False)
