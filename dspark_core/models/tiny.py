"""Tiny random models of a packaged model's architecture family, with its real tokenizer.

`tiny:smollm2-135m` is a 4-layer, d=64 Llama with SmolLM2's tokenizer and vocabulary: same code paths as
the real target, seconds to build, for unit tests. Weights are seeded, so the snapshot is reproducible.
"""

from __future__ import annotations

import hashlib
import json

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from dspark_core.models.packaged import locate_packaged

TINY_SEED = 0
# Bumping this changes every tiny snapshot's revision (and so its directory).
TINY_DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    # Larger than the usual 0.02 so the random model has peaked, non-trivial next-token distributions.
    "initializer_range": 0.2,
}
_DROP_KEYS = ("model_type", "layer_types", "quantization_config", "_name_or_path", "transformers_version", "dtype", "torch_dtype")


def tiny_revision(base_alias: str) -> str:
    payload = json.dumps({"base": base_alias, "dims": TINY_DIMS, "seed": TINY_SEED}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def build_tiny(base_alias: str):
    """Return (model, tokenizer) for `tiny:<base_alias>`, float32, deterministic."""
    gguf = locate_packaged(base_alias)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    base = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).get_text_config()
    fields = {k: v for k, v in base.to_dict().items() if k not in _DROP_KEYS}
    fields.update(TINY_DIMS)
    if "sliding_window" in fields:
        fields["sliding_window"] = min(fields["sliding_window"] or 512, 64)
    config = AutoConfig.for_model(base.model_type, **fields)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    return model, tokenizer
