"""The speculators half of `check_speculators.py`: runs in a Python environment that has vLLM's `speculators`
package (it pins its own transformers, so it lives in its own virtualenv) and imports nothing from dspark.

Loads a dspark export with `speculators`' own loader, reports which checkpoint tensors its model did not
expect and which of its weights the checkpoint (plus the verifier) left unset, and computes the draft's
teacher-forced logits on the inputs `check_speculators.py` wrote, with the package's own modules.

Usage: python speculators_side.py EXPORT_DIR INPUTS.safetensors OUTPUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from speculators import SpeculatorModel, SpeculatorModelConfig


def _load(export: Path):
    config = SpeculatorModelConfig.from_pretrained(str(export))
    # the exact (non-flex) attention path: dense masks, eager attention, no torch.compile
    config.transformer_layer_config._attn_implementation = "eager"  # noqa: SLF001
    model = SpeculatorModel.from_pretrained(str(export), config=config).eval()
    with safe_open(str(export / "model.safetensors"), "pt") as handle:
        stored = set(handle.keys())
    own = set(model.state_dict())
    ignored_missing = set(getattr(model, "_keys_to_ignore_on_load_missing", None) or [])
    # speculators fills verifier-owned weights with NaN until they are loaded; a matrix of one repeated value
    # was never loaded either (a default initialisation)
    unset = sorted(name for name, value in model.state_dict().items() if value.is_floating_point() and (
        torch.isnan(value).any() or (value.dim() >= 2 and value.numel() > 1 and bool(value.min() == value.max()))))
    report = {
        "class": type(model).__name__,
        "config_class": type(config).__name__,
        "unexpected_keys": sorted(stored - own),
        "missing_keys": sorted(own - stored - ignored_missing),
        "unset_after_load": unset,
        "stored_tensors": len(stored),
    }
    return model, report


@torch.no_grad()
def _dflash_logits(model, hidden_states, input_ids, anchors):
    """DSpark/DFlash: the backbone over blocks at exactly `anchors`, then (DSpark) the Markov bias and the
    confidence head, as `DSparkDraftModel.forward` combines them."""
    length, count, block = input_ids.shape[1], anchors.numel(), model.block_size
    loss_mask = torch.zeros(1, length, dtype=torch.long)
    loss_mask[0, anchors] = 1  # select_anchors takes every valid position when there are at most max_anchors
    hidden, logits, _, _, block_indices = model._backbone_forward(  # noqa: SLF001
        hidden_states, input_ids, loss_mask, torch.zeros(1, length, model.hidden_size),
        torch.zeros(1, length, dtype=torch.long), max_anchors=count)
    block_tokens = input_ids[0, block_indices].view(count, block)
    prev = block_tokens if model.config.sample_from_anchor else torch.cat([block_tokens[:, :1], block_tokens[:, :-1]], 1)
    hidden_blocks = hidden.view(count, block, -1)
    logits = logits.view(count, block, -1)
    out = {"block_indices": block_indices.view(count, block)}
    markov = getattr(model, "markov_head", None)
    prev_emb = None
    if markov is not None:
        prev_emb = markov.prev_embeddings(prev)
        logits = logits + markov.block_bias(prev_token_ids=prev, hidden_states=hidden_blocks, prev_emb=prev_emb)
    confidence_head = getattr(model, "confidence_head", None)
    if confidence_head is not None:
        features = torch.cat([hidden_blocks, prev_emb], -1) if model.config.confidence_head_with_markov else hidden_blocks
        out["confidence_logits"] = confidence_head(features)
    out["logits"] = logits
    return out


@torch.no_grad()
def _eagle3_logits(model, hidden_states, input_ids, steps):
    """Eagle3: the package's training-time-test forward over the whole sequence (teacher-forced), with the LM
    head's output of every step recorded. Its data convention pairs token x_{j+1} with features g_j."""
    recorded = []
    handle = model.lm_head.register_forward_hook(lambda _m, _i, output: recorded.append(output.detach().clone()))
    try:
        model(hidden_states[:, :-1], input_ids[:, 1:], torch.zeros(1, input_ids.shape[1] - 1, dtype=torch.long),
              ttt_steps=steps)
    finally:
        handle.remove()
    return {"logits": torch.stack([r[0] for r in recorded], dim=1)}  # [T-1, steps, N]


def main(argv: list[str]) -> int:
    export, inputs_path, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    inputs = load_file(str(inputs_path))
    model, report = _load(export)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    hidden_states = inputs["hidden_states"].to(dtype)
    if report["config_class"].startswith("Eagle3"):
        result = _eagle3_logits(model, hidden_states, inputs["input_ids"], int(inputs["steps"]))
    else:
        result = _dflash_logits(model, hidden_states, inputs["input_ids"], inputs["anchors"])
    save_file({k: v.contiguous() for k, v in result.items()}, str(out / "speculators_logits.safetensors"))
    from importlib.metadata import version

    report["versions"] = {name: version(name) for name in ("speculators", "transformers", "torch")}
    (out / "speculators_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
