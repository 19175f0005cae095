"""Draft checkpoints: safetensors weights + config.json, self-describing, written atomically.

config.json holds: algorithm, the module config, target spec and revision, layer ids, block size, mask
token, head type and rank, draft vocabulary size, the training config and the code version. The frozen
embedding and LM head are the target's and are not stored.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

import dspark_core
from dspark_core.drafters.base import DraftModule
from dspark_core.drafters.dspark import DSparkConfig, DSparkModel
from dspark_core.drafters.eagle3 import Eagle3Config, Eagle3Model
from dspark_core.errors import DsparkError
from dspark_core.paths import atomic_directory

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "dspark-draft"
MODEL_CLASSES = {"dspark": (DSparkConfig, DSparkModel), "dflash": (DSparkConfig, DSparkModel),
                 "eagle3": (Eagle3Config, Eagle3Model)}

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
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory

def read_draft_config(directory: Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise DsparkError(f"{directory} is not a draft checkpoint (no {CONFIG_FILE}); train one with `dspark train`")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise DsparkError(f"{directory} is not a dspark draft checkpoint (format {config.get('format')!r})")
    return config

def load_draft(directory: Path, target=None, *, check_target: bool = True) -> tuple[DraftModule, dict]:
    """Rebuild the module from a checkpoint; attach `target`'s embedding and LM head when given."""
    config = read_draft_config(directory)
    if target is not None and check_target and config["target_revision"] != target.revision:
        raise DsparkError(
            f"draft checkpoint {directory} was trained for {config['target']!r} (revision {str(config['target_revision'])[:12]}), "
            f"not for {target.spec!r} (revision {str(target.revision)[:12]}); train a draft for this target"
        )
    if config["algorithm"] not in MODEL_CLASSES:
        raise DsparkError(f"{directory}: unknown draft algorithm {config['algorithm']!r}")
    config_class, model_class = MODEL_CLASSES[config["algorithm"]]
    model = model_class(config_class(**config["module"]))
    try:
        state = load_file(str(Path(directory) / WEIGHTS_FILE))
    except Exception as exc:
        raise DsparkError(f"cannot read the weights of {directory} ({exc}); the checkpoint is corrupt") from exc
    saved_dtype = next(v.dtype for v in state.values() if v.is_floating_point())
    model.to(saved_dtype)  # load at the saved precision, then convert: never round-trip through float32
    model.load_state_dict(state, strict=True)
    if target is not None:
        model.to(device=target.device, dtype=target.dtype)
        attach_target_weights(model, target)
    return model.eval(), config

def attach_target_weights(model: DraftModule, target) -> None:
    dtype = next(p.dtype for p in model.parameters())
    embed = target.model.get_input_embeddings().weight
    lm_head = target.model.get_output_embeddings().weight
    model.attach_target(embed.to(dtype), lm_head.to(dtype))

