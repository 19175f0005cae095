"""Derived base models: a variant X′ of a model X with the same tokenizer, the way a served model changes under
its drafts (re-quantized weights, a short fine-tune on another domain). Drafts trained on X are then evaluated
unchanged on X′ (the transfer tests) to see whether they survive an update of their base model.

A derived model is a plain Hugging Face directory (safetensors, config, tokenizer) under
`$DSPARK_HOME/models/derived/NAME`, with `derived.json` recording its parent and how it was made; its model
spec is `derived:NAME`.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dspark_core.errors import ConfigError, DsparkError
from dspark_core.models.spec import DERIVED_PREFIX, slugify
from dspark_core.models.target import TargetModel
from dspark_core.paths import atomic_directory, exclusive_writer, models_dir, remove_stale_temporaries
from dspark_core.schemas import DerivedLineageFile, read_json
from dspark_core.settings import check_settings, setting

LINEAGE_FILE = "derived.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
#: the default fine-tuning text: Python's own standard library, a code domain on every machine
STDLIB_TEXT = "python-stdlib"


def check_derived_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"derived model name {name!r}: use lower-case letters, digits, '.', '_' and '-'")
    return name


def derived_dir(name: str) -> Path:
    return models_dir() / "derived" / name


def derived_spec(name: str) -> str:
    return DERIVED_PREFIX + name


def lineage(directory: Path) -> dict | None:
    """What `derived.json` records (parent spec and revision, method, settings), or None for other models."""
    path = directory / LINEAGE_FILE
    return read_json(path, DerivedLineageFile, fix="the derived model is damaged: derive it again") if path.is_file() else None


@dataclass(frozen=True)
class DeriveConfig:
    method: str = setting("quantize", "How X′ is made from X: 'quantize' (every decoder weight rounded to a few "
                                      "bits and back) or 'finetune' (a short causal-LM fine-tune on other text)",
                          choices=("quantize", "finetune"))
    bits: int = setting(4, "quantize: bits per weight (symmetric, one scale per group)", min=2, max=8)
    group_size: int = setting(32, "quantize: weights sharing one scale (along the input dimension)", min=4)
    text: str = setting(STDLIB_TEXT, "finetune: a text file, a directory of text files (.txt, .md or .py), or 'python-stdlib' "
                                     "(Python's standard library source: a code domain)")
    steps: int = setting(40, "finetune: optimizer steps", min=1)
    learning_rate: float = setting(3e-5, "finetune: AdamW learning rate", above=0)
    sequence_length: int = setting(256, "finetune: tokens per training sequence", min=16)
    batch_size: int = setting(4, "finetune: sequences per step", min=1)
    seed: int = setting(0, "finetune: seed of the order of the text chunks")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class DeriveReport:
    spec: str
    path: Path
    parent_spec: str
    parent_revision: str | None
    config: DeriveConfig
    #: quantize: mean relative weight error; finetune: loss of the first and last steps
    stats: dict
    seconds: float


@torch.no_grad()
def _quantize_(model: torch.nn.Module, bits: int, group_size: int) -> dict:
    """Round every linear weight of the decoder layers to `bits` bits per weight (symmetric, one scale per group
    of `group_size` inputs) and back to float, in place. Embeddings, norms and the LM head stay as they are."""
    levels = 2 ** (bits - 1) - 1
    errors = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or ".layers." not in f".{name}.":
            continue
        weight = module.weight.data
        out_features, in_features = weight.shape
        pad = (-in_features) % group_size
        grouped = torch.nn.functional.pad(weight, (0, pad)).reshape(out_features, -1, group_size)
        scale = grouped.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / levels
        rounded = (grouped / scale).round().clamp(-levels, levels) * scale
        rounded = rounded.reshape(out_features, -1)[:, :in_features]
        errors.append(((rounded - weight).norm() / weight.norm().clamp_min(1e-12)).item())
        weight.copy_(rounded)
    if not errors:
        raise DsparkError("no decoder linear layers found to quantize (expected modules under '.layers.')")
    return {"quantized_linears": len(errors), "mean_relative_weight_error": sum(errors) / len(errors)}


def text_files(text: str) -> list[Path]:
    """The files of a text source: a file, a directory's text files (.txt, .md or .py), or Python's standard library."""
    if text == STDLIB_TEXT:
        root = Path(sys.modules["os"].__file__).parent  # the standard library of this interpreter
        return sorted(p for p in root.glob("*.py") if p.stat().st_size > 2000)
    path = Path(text).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md", ".py") and p.is_file())
        if files:
            return files
    raise ConfigError(f"text source {text!r} is neither a file nor a directory with text files (.txt, .md or .py); "
                      f"give one, or '{STDLIB_TEXT}'")


def _training_chunks(target: TargetModel, config: DeriveConfig) -> torch.Tensor:
    """Token chunks of `sequence_length` from the text, enough for every step, in a seeded order."""
    needed = config.steps * config.batch_size
    ids: list[int] = []
    for path in text_files(config.text):
        ids += target.tokenizer(path.read_text(encoding="utf-8", errors="replace"))["input_ids"]
        if len(ids) >= needed * config.sequence_length:
            break
    chunks = len(ids) // config.sequence_length
    if chunks < config.batch_size:
        raise ConfigError(f"the fine-tuning text {config.text!r} has {len(ids)} tokens, fewer than one batch "
                          f"({config.batch_size} × {config.sequence_length}); give more text")
    tensor = torch.tensor(ids[: chunks * config.sequence_length]).view(chunks, config.sequence_length)
    order = torch.randperm(chunks, generator=torch.Generator().manual_seed(config.seed))
    return tensor[order]


def _finetune_(model: torch.nn.Module, target: TargetModel, config: DeriveConfig, progress: bool) -> dict:
    chunks = _training_chunks(target, config).to(target.device)
    model.requires_grad_(True)  # a loaded target is frozen
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    model.train()
    losses = []
    for step in tqdm(range(config.steps), desc="fine-tuning", disable=not progress):
        start = (step * config.batch_size) % len(chunks)
        batch = chunks[start: start + config.batch_size]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval().requires_grad_(False)
    return {"first_loss": losses[0], "last_loss": losses[-1], "tokens": config.steps * config.batch_size
            * config.sequence_length, "chunks_available": len(chunks)}


def derive_model(parent: TargetModel, name: str, config: DeriveConfig, *, overwrite: bool = False,
                 progress: bool = False) -> DeriveReport:
    """Make X′ = `name` from `parent` (X) and save it as `derived:NAME`; same tokenizer, new weights."""
    final = derived_dir(check_derived_name(name))
    started = time.perf_counter()
    with exclusive_writer(final, "deriving a model"):
        remove_stale_temporaries(final)
        if final.exists() and not overwrite:
            raise DsparkError(f"a derived model named {name!r} exists ({final}); choose another name or overwrite it")
        model = copy.deepcopy(parent.model).float()
        stats = (_quantize_(model, config.bits, config.group_size) if config.method == "quantize"
                 else _finetune_(model, parent, config, progress))
        record = {"parent": parent.spec, "parent_revision": parent.revision, "method": config.method,
                  "settings": asdict(config), "stats": stats}
        with atomic_directory(final, replace=overwrite) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            parent.tokenizer.save_pretrained(tmp)
            (tmp / LINEAGE_FILE).write_text(json.dumps(record, indent=2))
    return DeriveReport(derived_spec(name), final, parent.spec, parent.revision, config, stats,
                        time.perf_counter() - started)


def parent_spec(spec: str) -> str | None:
    """The spec of the model `spec` was derived from, or None when it is not a derived model."""
    if not spec.startswith(DERIVED_PREFIX):
        return None
    record = lineage(derived_dir(spec[len(DERIVED_PREFIX):]))
    return record["parent"] if record else None


def parent_slugs(specs: dict[str, str]) -> dict[str, str | None]:
    """{slug: the slug of the model it was derived from, or None} for a {slug: spec} mapping."""
    return {slug: slugify(parent) if (parent := parent_spec(spec)) else None for slug, spec in specs.items()}
