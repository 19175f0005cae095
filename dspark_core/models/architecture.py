"""Which transformers models the platform can drive: decoder-only causal LMs with a `layers` list."""

from __future__ import annotations

from torch import nn

from dspark_core.errors import UnsupportedModelError


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The model's list of decoder layers, or None when it has none we can tap."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    return layers if isinstance(layers, nn.ModuleList) else None


def check_supported(model: nn.Module, spec: str) -> None:
    """Refuse models whose structure the feature tap and the engine cannot drive."""
    if decoder_layers(model) is None or model.get_output_embeddings() is None:
        raise UnsupportedModelError(
            f"model {spec!r} ({type(model).__name__}) is not a decoder-only causal LM with a `layers` list and an "
            f"LM head; dspark supports Llama-, Qwen-, Mistral-, Gemma-style architectures"
        )
