"""Draft checkpoints and exports: safetensors weights + JSON config, self-describing, written atomically,
and one loader for both.

A checkpoint's config.json holds: algorithm, the module config, target spec and revision, layer ids, block
size, mask token, head type and rank, draft vocabulary size, the training config and the code version. The
frozen embedding and LM head are the target's and are not stored.

An export (`dspark.export`) is the same weights under another layout's names and config, plus
`dspark_export.json` recording its format and the source checkpoint's config. `load_draft` opens either,
with the same target checks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

import dspark_core
from dspark_core.drafters.base import DraftModule
from dspark_core.drafters.registry import DrafterKind, drafter_kind
from dspark_core.errors import DsparkError
from dspark_core.paths import atomic_directory, save_tensors, settled_directory
from dspark_core.schemas import DraftConfigFile, ExportRecordFile, ModelConfigFile, checked, read_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EXPORT_FILE = "dspark_export.json"
FORMAT = "dspark-draft"
_REDO = "the draft directory is damaged: export or train it again"


def save_draft(model: DraftModule, directory: Path, *, target, training: dict | None = None, extra: dict | None = None) -> Path:
    """Write `directory` atomically (temp dir + rename); an existing directory is replaced only on success."""
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {
        "format": FORMAT,
        "algorithm": model.config.algorithm,
        "module": model.config.to_dict(),
        "target": target.spec,
        "target_revision": target.revision,
        "target_architectures": list(getattr(target.model.config, "architectures", None) or []),
        "target_layer_ids": list(model.config.target_layer_ids),
        "block_size": model.config.block_size,
        "mask_token": getattr(model.config, "mask_token", None),
        "head": getattr(model.config, "head", None),
        "head_rank": getattr(model.config, "head_rank", None),
        "draft_vocab_size": model.config.draft_vocab_size,
        "training": training or {},
        "code_version": dspark_core.__version__,
        **(extra or {}),
    }
    with atomic_directory(directory, replace=True) as tmp:
        save_tensors(state, tmp / WEIGHTS_FILE, metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def is_export(directory: Path) -> bool:
    return (Path(directory) / EXPORT_FILE).is_file()


def read_draft_config(directory: Path) -> dict:
    """The checkpoint config of a checkpoint, or of the checkpoint an export was made from."""
    directory = settled_directory(directory)
    if is_export(directory):
        return read_json(directory / EXPORT_FILE, ExportRecordFile, fix=_REDO)["source"]
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise DsparkError(f"{directory} is not a draft checkpoint or export (no {CONFIG_FILE}); train one with "
                          f"`dspark train`")
    config = read_json(path, ModelConfigFile, fix=_REDO)
    if config.get("format") != FORMAT:
        raise DsparkError(f"{directory} is not a dspark draft checkpoint (format {config.get('format')!r})")
    return checked(config, DraftConfigFile, where=path, fix=_REDO)


def weights_sha256(directory: Path) -> str:
    """sha256 of a draft's weights file: the identity of its weights."""
    digest = hashlib.sha256()
    with open(settled_directory(directory) / WEIGHTS_FILE, "rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(Path(directory) / WEIGHTS_FILE))
    except Exception as exc:
        raise DsparkError(f"cannot read the weights of {directory} ({exc}); the checkpoint is corrupt") from exc


def _from_speculators(tensors: dict[str, torch.Tensor], kind: DrafterKind, model: DraftModule) -> dict[str, torch.Tensor]:
    """Speculators-layout tensors back under our names; the draft vocabulary from its `d2t` offsets."""
    ours = {kind.speculators_name(name): name for name in model.state_dict()}
    state = {ours[name]: value for name, value in tensors.items() if name in ours}
    if "d2t" in tensors:
        vocab = tensors["d2t"] + torch.arange(tensors["d2t"].numel())
    else:  # the draft vocabulary is the whole target vocabulary
        vocab = torch.arange(model.config.vocab_size)
    state["draft_vocab"] = vocab
    if getattr(model.config, "head_vocab", None) == "draft" and "head.embed.weight" in state:
        full = state["head.embed.weight"]  # a row per target token; ours: the draft tokens', then the shared row
        outside = torch.ones(full.shape[0], dtype=torch.bool)
        outside[vocab] = False
        shared = full[outside.nonzero()[0, 0]] if outside.any() else torch.zeros_like(full[0])
        state["head.embed.weight"] = torch.cat([full[vocab], shared[None]])
    return state


def shape_mismatch(config: dict, target) -> str | None:
    """Why a draft (its checkpoint config) cannot read `target` at all, or None when the shapes fit: the hidden
    size, the vocabulary and the tapped layers must exist in the target."""
    module = config["module"]
    if module["hidden_size"] != target.hidden_size:
        return f"hidden size {module['hidden_size']} vs the target's {target.hidden_size}"
    if module["vocab_size"] != target.vocab_size:
        return f"vocabulary of {module['vocab_size']} tokens vs the target's {target.vocab_size}"
    if max(config["target_layer_ids"]) >= target.num_layers:
        return f"taps layer {max(config['target_layer_ids'])} of a target with {target.num_layers} layers"
    return None


def load_draft(directory: Path, target=None, *, check_target: bool = True) -> tuple[DraftModule, dict]:
    """Rebuild the module from a checkpoint or an export (either format); returns (module, checkpoint config).
    With `target`, refuses a draft trained for another revision (unless `check_target` is False: a transfer
    test, where only the shapes must fit) and attaches the target's embedding and LM head."""
    directory = settled_directory(directory)
    config = read_draft_config(directory)
    if target is not None and check_target and config["target_revision"] != target.revision:
        raise DsparkError(
            f"draft {directory} was trained for {config['target']!r} (revision {str(config['target_revision'])[:12]}), "
            f"not for {target.spec!r} (revision {str(target.revision)[:12]}); train a draft for this target"
        )
    if target is not None and (mismatch := shape_mismatch(config, target)):
        raise DsparkError(f"draft {directory} (trained for {config['target']!r}) cannot run on {target.spec!r}: "
                          f"{mismatch}")
    kind = drafter_kind(config["algorithm"])
    try:
        model = kind.build(kind.saved_config(config["module"]))
    except (TypeError, ValueError, KeyError) as exc:  # an unknown or missing field, a value out of range
        raise DsparkError(f"{directory}: its config does not describe a {config['algorithm']} draft this version of "
                          f"dspark can build ({exc}); train or export it again") from None
    state = _read_weights(directory)
    if is_export(directory) and read_json(directory / EXPORT_FILE, ExportRecordFile, fix=_REDO)["format"] == "speculators":
        state = _from_speculators(state, kind, model)
    saved_dtype = next(v.dtype for v in state.values() if v.is_floating_point())
    model.to(saved_dtype)  # load at the saved precision, then convert: never round-trip through float32
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing, unexpected or differently shaped tensors
        problem = " ".join(str(exc).split("\n")[1:2]).strip() or str(exc)
        raise DsparkError(f"{directory}: its weights do not match its config ({problem}); the draft directory is "
                          f"damaged: export or train it again") from None
    if target is not None:
        model.to(device=target.device, dtype=target.dtype)
        attach_target_weights(model, target)
    return model.eval(), config


def load_drafter(directory: Path, target, *, check_target: bool = True):
    """The engine drafter of a trained checkpoint or an export, for `target` (see `load_draft`)."""
    model, config = load_draft(directory, target, check_target=check_target)
    return drafter_kind(config["algorithm"]).runtime(model, name=f"{config['algorithm']}:{Path(directory).name}")


def attach_target_weights(model: DraftModule, target) -> None:
    dtype = next(p.dtype for p in model.parameters())
    embed = target.model.get_input_embeddings().weight
    lm_head = target.model.get_output_embeddings().weight
    model.attach_target(embed.to(dtype), lm_head.to(dtype))
