"""Export a draft checkpoint to a Hugging Face-style directory or to the speculators field layout.
`dspark_core.drafters.checkpoint.load_draft` loads either back into the same module (bit-identical weights,
hence bit-identical logits).

* `hf`: our own layout: config.json with `architectures` / `model_type` and our module config,
  model.safetensors with our parameter names, plus the checkpoint's provenance (target, revision, training).
* `speculators`: the names vLLM's speculators project uses — top-level `speculators_model_type`,
  `transformer_layer_config` (a Llama-style layer config), `draft_vocab_size`, `block_size`,
  `aux_hidden_state_layer_ids` (hidden_states indices, i.e. layer id + 1; `eagle_aux_hidden_state_layer_ids`
  for Eagle3), `markov_rank` / `markov_head_type` / `enable_confidence_head`, loss weights, and a
  `speculators_config` block (algorithm, greedy proposal with `speculative_tokens`, verifier). Tensor names
  come from the drafter registry; the draft vocabulary is stored as `d2t` (offsets) and `t2d` (mask). Two
  things have no speculators field and keep their own names: DSpark's learned mask embedding
  (`mask_embedding`, with `mask_token_id: null`) and the gated/RNN head internals. Loading by the
  speculators package itself is not verified here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dspark_core.drafters.checkpoint import CONFIG_FILE, EXPORT_FILE, WEIGHTS_FILE, is_export, read_draft_config
from dspark_core.drafters.registry import drafter_kind
from dspark_core.errors import DsparkError
from dspark_core.paths import atomic_directory

FORMATS = ("hf", "speculators")
HEAD_W1 = "head.embed.weight"  # DSpark's previous-token embedding (one row per draft token + 1, or per target token)
SPECULATORS_VERSION = "0.3.0"
_HEAD_TYPES = {"markov": "vanilla", "gated": "gated", "rnn": "rnn"}

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
        "architectures": [drafter_kind(algorithm).speculators_architecture],
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
        # sequential temperature scaling of the confidences (no speculators field: our name)
        "confidence_temperatures": list(module.get("confidence_temperatures") or []) or None,
        "confidence_shifts": list(module.get("confidence_shifts") or []) or None,
        "confidence_head_with_markov": bool(module["confidence"]),
        "ce_loss_alpha": loss.get("ce"),
        "l1_loss_alpha": loss.get("tv"),
        "confidence_head_alpha": loss.get("conf"),
        "loss_decay_gamma": loss.get("decay"),
    }


def export_draft(checkpoint: Path, out: Path, fmt: str = "speculators") -> Path:
    """Write `checkpoint` to `out` in format `fmt`, atomically; the source's config is kept in dspark_export.json.
    An existing export at `out` is replaced (only once the new one is complete); any other existing
    directory is refused."""
    if fmt not in FORMATS:
        raise DsparkError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not is_export(out):
        raise DsparkError(f"{out} exists and is not a dspark export; choose another --out directory or remove it")
    config = read_draft_config(checkpoint)
    state = load_file(str(Path(checkpoint) / WEIGHTS_FILE))
    kind = drafter_kind(config["algorithm"])
    if fmt == "hf":
        exported = {
            "architectures": [f"{kind.name.capitalize()}DraftModel"],
            "model_type": f"dspark_{kind.name}_draft",
            **{k: v for k, v in config.items() if k != "format"},
        }
        tensors = state
    else:
        exported = _speculators_config(config)
        tensors = {kind.speculators_name(k): v for k, v in state.items() if k != "draft_vocab"}
        vocab = state["draft_vocab"].long()
        if config["module"].get("head_vocab") == "draft" and HEAD_W1 in state:
            # speculators' W_1 has a row per target token: the shared row of the tokens outside the draft vocabulary
            rows = torch.full((config["module"]["vocab_size"],), vocab.numel(), dtype=torch.long)
            rows[vocab] = torch.arange(vocab.numel())
            tensors[kind.speculators_name(HEAD_W1)] = state[HEAD_W1][rows]
        tensors["d2t"] = vocab - torch.arange(vocab.numel())
        t2d = torch.zeros(config["module"]["vocab_size"], dtype=torch.bool)
        t2d[vocab] = True
        tensors["t2d"] = t2d
    with atomic_directory(out, replace=True) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE), metadata={"format": fmt})
        (tmp / CONFIG_FILE).write_text(json.dumps(exported, indent=2, sort_keys=True) + "\n")
        (tmp / EXPORT_FILE).write_text(json.dumps({"format": fmt, "source": config}, indent=2, sort_keys=True) + "\n")
    return out
