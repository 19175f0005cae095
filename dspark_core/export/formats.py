"""Export a draft checkpoint to a Hugging Face-style directory or to the speculators field layout, and load
either back into the same module (bit-identical weights, hence bit-identical logits).

* `hf`: config.json with `architectures` / `model_type` and our module config, model.safetensors with our
  parameter names, plus the checkpoint's provenance (target, revision, training config).
* `speculators`: the names vLLM's speculators project uses — top-level `speculators_model_type`,
  `transformer_layer_config` (a Llama-style layer config), `draft_vocab_size`, `block_size`,
  `aux_hidden_state_layer_ids` (hidden_states indices, i.e. layer id + 1; `eagle_aux_hidden_state_layer_ids`
  for Eagle3), `markov_rank` / `markov_head_type` / `enable_confidence_head`, loss weights, and a
  `speculators_config` block (algorithm, greedy proposal with `speculative_tokens`, verifier). Weights use
  `fc`, `hidden_norm`, `norm`, `layers.N.self_attn.*`, `layers.N.mlp.*_proj`, `markov_head.markov_w1/w2`,
  `confidence_head.proj`, and the draft vocabulary as `d2t` (offsets) and `t2d` (mask). Two things have no
  speculators field and are kept under their own names: DSpark's learned mask embedding (`mask_embedding`,
  with `mask_token_id: null`) and the gated/RNN head internals. Runtime compatibility with vLLM's loaders is
  not verified here (no vLLM in this environment); the layout is what their config classes name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dspark_core.drafters.checkpoint import (
    CONFIG_FILE,
    MODEL_CLASSES,
    WEIGHTS_FILE,
    attach_target_weights,
    read_draft_config,
)
from dspark_core.errors import DsparkError
from dspark_core.paths import atomic_directory

FORMATS = ("hf", "speculators")
EXPORT_FILE = "dspark_export.json"
SPECULATORS_VERSION = "0.3.0"
_HEAD_TYPES = {"markov": "vanilla", "gated": "gated", "rnn": "rnn"}

# (our name pattern, speculators name); the first match wins. Names without a match are kept.
_DSPARK_RENAMES = [
    (r"^fuse\.weight$", "fc.weight"),
    (r"^fuse_norm\.weight$", "hidden_norm.weight"),
    (r"^final_norm\.weight$", "norm.weight"),
    (r"^layers\.(\d+)\.input_norm\.weight$", r"layers.\1.input_layernorm.weight"),
    (r"^layers\.(\d+)\.post_norm\.weight$", r"layers.\1.post_attention_layernorm.weight"),
    (r"^layers\.(\d+)\.attention\.(q|k|v|o)_proj\.weight$", r"layers.\1.self_attn.\2_proj.weight"),
    (r"^layers\.(\d+)\.mlp\.(gate|up|down)\.weight$", r"layers.\1.mlp.\2_proj.weight"),
    (r"^head\.embed\.weight$", "markov_head.markov_w1.weight"),
    (r"^head\.out\.weight$", "markov_head.markov_w2.weight"),
    (r"^head\.(gate|cell)\.(weight|bias)$", r"markov_head.\1.\2"),
    (r"^confidence\.(weight|bias)$", r"confidence_head.proj.\1"),
]
_EAGLE3_RENAMES = [
    (r"^fuse\.weight$", "fc.weight"),
    (r"^embed_norm\.weight$", "layers.0.input_layernorm.weight"),
    (r"^hidden_norm\.weight$", "layers.0.hidden_norm.weight"),
    (r"^attention\.(q|k|v|o)_proj\.weight$", r"layers.0.self_attn.\1_proj.weight"),
    (r"^post_norm\.weight$", "layers.0.post_attention_layernorm.weight"),
    (r"^mlp\.(gate|up|down)\.weight$", r"layers.0.mlp.\1_proj.weight"),
    (r"^final_norm\.weight$", "norm.weight"),
]


def _rename(name: str, algorithm: str) -> str:
    for pattern, replacement in _EAGLE3_RENAMES if algorithm == "eagle3" else _DSPARK_RENAMES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return name  # e.g. mask_embedding: no speculators counterpart


def _layer_config(module: dict, num_layers: int) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": module["hidden_size"],
        "intermediate_size": module["intermediate_size"],
        "num_hidden_layers": num_layers,
        "num_attention_heads": module["num_heads"],
        "num_key_value_heads": module["num_kv_heads"],
        "head_dim": module["head_dim"],
        "rms_norm_eps": module["rms_norm_eps"],
        "rope_parameters": {"rope_type": "default", "rope_theta": module["rope_theta"]},
        "vocab_size": module["vocab_size"],
    }


def _speculators_config(config: dict) -> dict:
    module, algorithm = config["module"], config["algorithm"]
    training = config.get("training", {})
    loss = training.get("loss", {})
    common = {
        "speculators_model_type": algorithm,
        "speculators_version": SPECULATORS_VERSION,
        "architectures": [{"dspark": "DSparkSpeculator", "dflash": "DFlashSpeculator", "eagle3": "Eagle3Speculator"}[algorithm]],
        "draft_vocab_size": module["draft_vocab_size"],
        "target_hidden_size": module["hidden_size"],
        "speculators_config": {
            "algorithm": algorithm,
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": module["block_size"]}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": config["target"], "architectures": config.get("target_architectures", [])},
        },
    }
    hidden_state_ids = [i + 1 for i in module["target_layer_ids"]]  # speculators index hidden_states
    if algorithm == "eagle3":
        return {**common, "transformer_layer_config": _layer_config(module, 1), "norm_before_residual": False,
                "eagle_aux_hidden_state_layer_ids": hidden_state_ids}
    head = module["head"]
    return {
        **common,
        "transformer_layer_config": _layer_config(module, module["num_layers"]),
        "block_size": module["block_size"],
        "num_anchors": training.get("anchors_per_sequence"),
        "aux_hidden_state_layer_ids": hidden_state_ids,
        "mask_token_id": None,
        "markov_rank": 0 if head == "none" else module["head_rank"],
        "markov_head_type": _HEAD_TYPES.get(head, "vanilla"),
        "enable_confidence_head": bool(module["confidence"]),
        "confidence_head_with_markov": bool(module["confidence"]),
        "ce_loss_alpha": loss.get("ce"),
        "l1_loss_alpha": loss.get("tv"),
        "confidence_head_alpha": loss.get("conf"),
        "loss_decay_gamma": loss.get("decay"),
    }


def export_draft(checkpoint: Path, out: Path, fmt: str = "hf") -> Path:
    """Write `checkpoint` to `out` in format `fmt` (atomic). The source's config is kept in dspark_export.json."""
    if fmt not in FORMATS:
        raise DsparkError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    config = read_draft_config(checkpoint)
    state = load_file(str(Path(checkpoint) / WEIGHTS_FILE))
    algorithm = config["algorithm"]
    if fmt == "hf":
        exported = {
            "architectures": [f"{algorithm.capitalize()}DraftModel"],
            "model_type": f"dspark_{algorithm}_draft",
            **{k: v for k, v in config.items() if k != "format"},
        }
        tensors = state
    else:
        exported = _speculators_config(config)
        tensors = {_rename(k, algorithm): v for k, v in state.items() if k != "draft_vocab"}
        vocab = state["draft_vocab"].long()
        tensors["d2t"] = vocab - torch.arange(vocab.numel())
        t2d = torch.zeros(config["module"]["vocab_size"], dtype=torch.bool)
        t2d[vocab] = True
        tensors["t2d"] = t2d
    with atomic_directory(Path(out)) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE), metadata={"format": fmt})
        (tmp / CONFIG_FILE).write_text(json.dumps(exported, indent=2, sort_keys=True) + "\n")
        (tmp / EXPORT_FILE).write_text(json.dumps({"format": fmt, "source": config}, indent=2, sort_keys=True) + "\n")
    return Path(out)


def load_export(directory: Path, target=None):
    """Rebuild the draft module from an export of either format; returns (module, source config)."""
    record_path = Path(directory) / EXPORT_FILE
    if not record_path.is_file():
        raise DsparkError(f"{directory} is not a dspark export (no {EXPORT_FILE}); export one with `dspark export`")
    record = json.loads(record_path.read_text())
    source = record["source"]
    algorithm = source["algorithm"]
    config_class, model_class = MODEL_CLASSES[algorithm]
    model = model_class(config_class(**source["module"]))
    tensors = load_file(str(Path(directory) / WEIGHTS_FILE))
    if record["format"] == "speculators":
        back = {_rename(name, algorithm): name for name in model.state_dict()}
        state = {back[k]: v for k, v in tensors.items() if k in back}
        vocab = tensors["d2t"] + torch.arange(tensors["d2t"].numel())
        state["draft_vocab"] = vocab
    else:
        state = tensors
    dtype = next(v.dtype for v in state.values() if v.is_floating_point())
    model.to(dtype)
    model.load_state_dict(state, strict=True)
    if target is not None:
        model.to(device=target.device, dtype=target.dtype)
        attach_target_weights(model, target)
    return model.eval(), source
