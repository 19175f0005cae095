"""Export a draft checkpoint to a Hugging Face-style directory or to vLLM's speculators layout.
`dspark_core.drafters.checkpoint.load_draft` loads either back into the same module (bit-identical weights,
hence bit-identical logits).

* `hf`: our own layout: config.json with `architectures` / `model_type` and our module config,
  model.safetensors with our parameter names, plus the checkpoint's provenance (target, revision, training).
* `speculators`: the config and tensor names of the `speculators` package (checked against 0.9.0 by
  `benchmarks/check_speculators.py`): `speculators_model_type`, `transformer_layer_config` (a Qwen3-style
  layer for DSpark/DFlash, a Llama layer for Eagle3), `draft_vocab_size`, `block_size`, hidden-state layer
  ids (layer id + 1), `mask_token_id`, `sample_from_anchor`, the sequential/confidence head fields and a
  `speculators_config` block whose verifier is something a user can resolve (a Hugging Face id, or the
  local snapshot directory the draft was trained against). Tensors: speculators' names, the reduced
  vocabulary as `d2t` (offsets) / `t2d` (mask), its LM head rows as `lm_head.weight` and, for Eagle3, the
  target's input embedding as `embed_tokens.weight`. Only drafts the
  format expresses exactly are exported: DSpark/DFlash drafts need query/key norms and a vocabulary mask
  token (`TrainConfig.qk_norm`, `mask_token="vocab"`) and no `anchor_state` input, and DFlash drafts the layout
  vLLM's dflash serves (mask slots draft, `sample_from_anchor` false); others are refused rather than written
  lossily or misread.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from dspark_core.drafters.checkpoint import CONFIG_FILE, EXPORT_FILE, WEIGHTS_FILE, is_export, read_draft_config
from dspark_core.drafters.registry import drafter_kind
from dspark_core.errors import DsparkError
from dspark_core.models.snapshot import Snapshot, list_snapshots
from dspark_core.paths import (atomic_directory, exclusive_writer, remove_stale_temporaries, save_tensors,
                               settled_directory)
from dspark_core.schemas import ModelConfigFile, read_json

FORMATS = ("hf", "speculators")
HEAD_W1 = "head.embed.weight"  # DSpark's previous-token embedding (one row per draft token + 1, or per target token)
SPECULATORS_VERSION = "0.9.0"  # the release whose loader the format is checked against
_HEAD_TYPES = {"markov": "vanilla", "gated": "gated", "rnn": "rnn"}

def _layer_config(module: dict, num_layers: int, model_type: str, max_positions: int) -> dict:
    """The decoder-layer config speculators (and vLLM) build the draft's layers from."""
    return {
        "model_type": model_type,
        "hidden_size": module["hidden_size"],
        "intermediate_size": module["intermediate_size"],
        "num_hidden_layers": num_layers,
        "num_attention_heads": module["num_heads"],
        "num_key_value_heads": module["num_kv_heads"],
        "head_dim": module["head_dim"],
        "hidden_act": "silu",
        "attention_bias": False,
        "rms_norm_eps": module["rms_norm_eps"],
        "rope_parameters": {"rope_type": "default", "rope_theta": module["rope_theta"]},
        "vocab_size": module["vocab_size"],
        "max_position_embeddings": max_positions,  # vLLM's DFlash layer reads it, with no default
    }


def check_speculators_exact(config: dict) -> None:
    """Refuse a draft the speculators format cannot express: the loaded module would compute something else."""
    module, algorithm = config["module"], config["algorithm"]
    if algorithm == "eagle3":
        return
    missing = []
    if not module.get("qk_norm"):
        missing.append("its layers have no query/key norm (train with --qk-norm)")
    if module.get("mask_token", "learned") != "vocab":
        missing.append("its mask slots use a learned vector, not a vocabulary token (train with --mask-token vocab)")
    if module.get("anchor_state"):
        missing.append("its block slots read the target's last state directly (trained with anchor_state)")
    if algorithm == "dflash" and module.get("sample_from_anchor", True):
        # vLLM's dflash ignores `sample_from_anchor` and drafts from the mask slots: it would draft every token
        # one position off, with nothing to tell (measured: acceptance 0 of 248)
        missing.append("its anchor slot drafts the first token, and vLLM's dflash drafts from the mask slots only "
                       "(train with --no-sample-from-anchor, the DFlash default)")
    if missing:
        raise DsparkError(f"this {algorithm} draft cannot be exported to the speculators format exactly: "
                          f"{'; '.join(missing)}; export it with --format hf (our own layout) instead")


def target_snapshot(config: dict) -> Snapshot:
    """The imported snapshot of the weights the draft was trained for (the same revision, whatever spec led there)."""
    for snapshot in list_snapshots():
        if snapshot.revision == config["target_revision"]:
            return snapshot
    raise DsparkError(f"the snapshot of {config['target']!r} (revision {str(config['target_revision'])[:12]}) that "
                      f"this draft was trained for is not in this $DSPARK_HOME; import it first with "
                      f"`dspark models import {config['target']}`")


def verifier_reference(snapshot: Snapshot) -> dict:
    """How a serving engine finds the verifier: a Hugging Face id for hub models, else the local directory of
    the weights the draft was trained against (GGUF and packaged models are de-quantized there)."""
    info = snapshot.info
    hub = info.get("source_kind") == "hub"
    name = info["source"] if hub else str(snapshot.path.resolve())
    return {"name_or_path": name, "revision": info.get("hub_commit") if hub else None, "spec": info["spec"],
            "content_sha256": info["revision"], "source": info["source"]}


def _target_tensor(snapshot: Snapshot, name: str) -> torch.Tensor:
    """One of the target's tensors, read from its snapshot (`lm_head.weight` is the input embedding when tied)."""
    from safetensors import safe_open

    if name == "lm_head.weight" and _target_config(snapshot).get("tie_word_embeddings"):
        name = "embed_tokens.weight"
    with safe_open(str(snapshot.path / WEIGHTS_FILE), "pt") as weights:
        matches = sorted((n for n in weights.keys() if n.endswith(name)), key=len)
        if not matches:
            raise DsparkError(f"{snapshot.path} has no {name} tensor; re-import the model with `dspark models import`")
        return weights.get_tensor(matches[0])


def _target_max_positions(snapshot: Snapshot) -> int:
    """The verifier's context length, from its own config (a multimodal model's text part)."""
    target = _target_config(snapshot)
    target = target.get("text_config", target) if "max_position_embeddings" not in target else target
    return int(target.get("max_position_embeddings") or 2048)


def _target_config(snapshot: Snapshot) -> dict:
    return read_json(snapshot.path / "config.json", ModelConfigFile,
                     fix="the model snapshot is damaged: import it again with `dspark models import --refresh`")


def _speculators_config(config: dict, verifier: dict, max_positions: int) -> dict:
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
            "verifier": {"name_or_path": verifier["name_or_path"],
                         "architectures": config.get("target_architectures", [])},
        },
        # no speculators field: where the verifier came from and which exact weights it is
        "dspark_verifier": verifier,
    }
    hidden_state_ids = [i + 1 for i in module["target_layer_ids"]]  # speculators index hidden_states
    if algorithm == "eagle3":
        # vLLM sizes the fused input by `num_aux_hidden_states` (else assumes 3), not by the layer ids
        layer = {**_layer_config(module, 1, "llama", max_positions), "num_aux_hidden_states": len(hidden_state_ids)}
        return {**common, "transformer_layer_config": layer, "norm_before_residual": False,
                "eagle_aux_hidden_state_layer_ids": hidden_state_ids}
    head = module["head"]
    return {
        **common,
        "transformer_layer_config": _layer_config(module, module["num_layers"], "qwen3", max_positions),
        # the block's slots: γ when the anchor slot drafts the first token, else the anchor and γ mask slots (the
        # drafts are `speculative_tokens` = γ either way)
        "block_size": module["block_size"] + (0 if module.get("sample_from_anchor", True) else 1),
        "sample_from_anchor": module.get("sample_from_anchor", True),
        "num_anchors": training.get("anchors_per_sequence"),
        "aux_hidden_state_layer_ids": hidden_state_ids,
        "mask_token_id": module.get("mask_token_id"),
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
    state = load_file(str(settled_directory(checkpoint) / WEIGHTS_FILE))
    kind = drafter_kind(config["algorithm"])
    if fmt == "hf":
        exported = {
            "architectures": [f"{kind.name.capitalize()}DraftModel"],
            "model_type": f"dspark_{kind.name}_draft",
            **{k: v for k, v in config.items() if k != "format"},
        }
        tensors = state
    else:
        check_speculators_exact(config)
        snapshot = target_snapshot(config)
        exported = _speculators_config(config, verifier_reference(snapshot), _target_max_positions(snapshot))
        tensors = {kind.speculators_name(k): v for k, v in state.items() if k != "draft_vocab"}
        vocab = state["draft_vocab"].long()
        dtype = next(v.dtype for v in tensors.values() if v.is_floating_point())
        tensors["lm_head.weight"] = _target_tensor(snapshot, "lm_head.weight")[vocab].to(dtype)  # the draft rows
        if kind.name == "eagle3":
            # speculators 0.9 leaves an Eagle3 draft's embedding uninitialised unless the checkpoint holds it (its
            # own Eagle3 checkpoints do); DSpark/DFlash always take it from the verifier
            tensors["embed_tokens.weight"] = _target_tensor(snapshot, "embed_tokens.weight").to(dtype)
        if config["module"].get("head_vocab") == "draft" and HEAD_W1 in state:
            # speculators' W_1 has a row per target token: the shared row of the tokens outside the draft vocabulary
            rows = torch.full((config["module"]["vocab_size"],), vocab.numel(), dtype=torch.long)
            rows[vocab] = torch.arange(vocab.numel())
            tensors[kind.speculators_name(HEAD_W1)] = state[HEAD_W1][rows]
        if vocab.numel() < config["module"]["vocab_size"]:  # speculators has no mapping buffers for a full vocabulary
            tensors["d2t"] = vocab - torch.arange(vocab.numel())
            t2d = torch.zeros(config["module"]["vocab_size"], dtype=torch.bool)
            t2d[vocab] = True
            tensors["t2d"] = t2d
    with exclusive_writer(out, "writing an export"):
        remove_stale_temporaries(out)  # of exports killed mid-way (we hold the lock: none of them is live)
        with atomic_directory(out, replace=True) as tmp:
            save_tensors({k: v.contiguous() for k, v in tensors.items()}, tmp / WEIGHTS_FILE, metadata={"format": fmt})
            (tmp / CONFIG_FILE).write_text(json.dumps(exported, indent=2, sort_keys=True) + "\n")
            (tmp / EXPORT_FILE).write_text(json.dumps({"format": fmt, "source": config}, indent=2, sort_keys=True) + "\n")
    return out
