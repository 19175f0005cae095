"""Model specs: the strings users type to name a target (alias, HF id, local dir, .gguf file, tiny:...)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dspark_core.errors import ModelSpecError
from dspark_core.models.packaged import PACKAGED_MODELS
from dspark_core.paths import models_dir

TINY_PREFIX = "tiny:"
DERIVED_PREFIX = "derived:"  # a variant made by `dspark models derive`, under $DSPARK_HOME/models/derived
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelSource:
    """Where a spec's weights come from, before import."""

    spec: str
    kind: str  # "packaged" | "gguf" | "local_dir" | "hub" | "tiny"
    location: str  # alias, file path, directory, repo id, or base spec for tiny


def slugify(spec: str) -> str:
    """A filesystem- and Dagster-partition-safe slug of a model spec."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.strip()).strip("-._").lower()
    return slug or "model"


def parse_spec(spec: str) -> ModelSource:
    """Classify a spec string, or raise ModelSpecError naming the accepted forms."""
    spec = spec.strip()
    if not spec:
        raise ModelSpecError("empty model spec; give a packaged alias, a Hugging Face id, a local directory or a .gguf file")
    if spec in PACKAGED_MODELS:
        return ModelSource(spec, "packaged", spec)
    if spec.startswith(DERIVED_PREFIX):
        name = spec[len(DERIVED_PREFIX):]
        directory = models_dir() / "derived" / name
        if not name or not (directory / "config.json").is_file():
            raise ModelSpecError(f"no derived model {name!r} in {directory.parent}; make it with "
                                 f"`dspark models derive PARENT --name {name or 'NAME'}`")
        return ModelSource(spec, "local_dir", str(directory))
    if spec.startswith(TINY_PREFIX):
        base = spec[len(TINY_PREFIX):]
        if base not in PACKAGED_MODELS:
            raise ModelSpecError(
                f"tiny model spec {spec!r}: the base must be a packaged alias ({', '.join(PACKAGED_MODELS)}), "
                f"e.g. 'tiny:smollm2-135m'"
            )
        return ModelSource(spec, "tiny", base)
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return ModelSource(spec, "gguf", str(path.resolve()))
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelSpecError(f"directory {spec!r} has no config.json; point at a Hugging Face model directory")
            return ModelSource(spec, "local_dir", str(path.resolve()))
        raise ModelSpecError(f"file {spec!r} is not a .gguf model file; give a .gguf file or a model directory")
    if spec.endswith(".gguf") or spec.startswith((".", "/", "~")):
        raise ModelSpecError(f"model path {spec!r} does not exist")
    if _HUB_ID.match(spec):
        return ModelSource(spec, "hub", spec)
    raise ModelSpecError(
        f"unknown model spec {spec!r}: not a packaged alias ({', '.join(PACKAGED_MODELS)}), "
        f"not an existing directory or .gguf file, and not a Hugging Face id of the form 'org/name'"
    )
