"""Stage 3, feature cache: the target's chosen layer outputs and pre-LM-head state over every conversation."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from dspark_core.data import layout
from dspark_core.data.chat import tokenize_conversations
from dspark_core.data.feature_cache import DISK_MARGIN, CacheConfig, build_feature_cache, cache_bytes_per_token
from dspark_core.data.regenerate import read_responses
from dspark_core.distributed import World
from dspark_core.errors import DsparkError
from dspark_core.models.target import TargetModel
from dspark_core.schemas import FileShapeError, JsonObject, read_json

__all__ = ["CacheConfig", "CacheEstimate", "FeatureCacheReport", "build_cache", "estimate_cache", "find_cache"]


@dataclass
class FeatureCacheReport:
    path: Path
    layer_ids: list[int]
    samples: int
    tokens: int
    assistant_tokens: int
    shards: int
    dtype: str
    size_mib: float
    target_revision: str
    #: True when a finished cache of the same data and settings was already there
    reused: bool
    #: samples whose features were copied from the cache's earlier version (a dataset that grew) rather than computed
    copied_samples: int = 0
    #: shards built again beside reused ones: damaged or missing shards repaired, or the rest of a resumed build
    rebuilt_shards: int = 0

    def to_json(self) -> dict:
        """Plain JSON values (the path as a string): what a stage run in another process sends back."""
        return {**asdict(self), "path": str(self.path)}

    @classmethod
    def from_json(cls, data: dict) -> "FeatureCacheReport":
        return cls(**{**data, "path": Path(data["path"])})


def build_cache(target: TargetModel, dataset: str, config: CacheConfig, *, progress: bool = True,
                world: World | None = None, force: bool = False) -> FeatureCacheReport:
    """Build (or reuse, or resume) the cache of `dataset`'s responses under its target folder. Under a process
    group (`world`, by default the one this process joined) every rank calls it and builds its share of the
    shards; every rank gets the same report."""
    responses = layout.responses_dir(dataset, target.spec)
    responses_manifest, conversations = read_responses(responses)
    layers = config.layers_for(target.num_layers)
    out = layout.cache_dir(dataset, target.spec, layers, config.dtype)
    before = _manifest_before(out / "manifest.json")
    manifest = build_feature_cache(
        target, conversations, out, config, progress=progress,
        source={"responses": str(responses), "target_revision": responses_manifest["target_revision"]}, world=world,
        force=force,
    )
    return FeatureCacheReport(
        path=out, layer_ids=list(manifest["layer_ids"]), samples=manifest["num_samples"], tokens=manifest["num_tokens"],
        assistant_tokens=manifest["assistant_tokens"], shards=len(manifest["shards"]), dtype=manifest["dtype"],
        size_mib=round(manifest["bytes"] / 2**20, 1), target_revision=manifest["target_revision"],
        reused=before is not None and before.get("created_at") == manifest.get("created_at"),
        copied_samples=int(manifest.get("copied_samples", 0)) if before != manifest else 0,
        rebuilt_shards=int(manifest.get("rebuilt_shards", 0)) if before != manifest else 0,
    )


@dataclass
class CacheEstimate:
    """How large a dataset's feature cache would be, and whether the disk holds it."""

    path: Path
    samples: int
    tokens: int
    bytes_per_token: int
    bytes_needed: int
    bytes_free: int

    @property
    def fits(self) -> bool:
        return self.bytes_needed * DISK_MARGIN <= self.bytes_free

    @property
    def mode(self) -> str:
        """What to do: build the cache, or train with the target computing features online."""
        return "cached (`dspark data cache`)" if self.fits else "online (`dspark train --online-features`)"


def estimate_cache(target: TargetModel, dataset: str, config: CacheConfig) -> CacheEstimate:
    """The size of `dataset`'s cache with `config` (tokenizing the responses; the target's weights are not needed),
    against the free space where it would go."""
    responses = layout.responses_dir(dataset, target.spec)
    samples = tokenize_conversations(target, read_responses(responses)[1], config.max_length)
    out = layout.cache_dir(dataset, target.spec, config.layers_for(target.num_layers), config.dtype)
    per_token = cache_bytes_per_token(target.hidden_size, len(config.layers_for(target.num_layers)), config.dtype)
    tokens = sum(len(s["ids"]) for s in samples)
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("/"))
    return CacheEstimate(path=out, samples=len(samples), tokens=tokens, bytes_per_token=per_token,
                         bytes_needed=tokens * per_token, bytes_free=shutil.disk_usage(existing).free)


def find_cache(target_spec: str, dataset: str, layer_ids: tuple[int, ...] | None = None, dtype: str | None = None) -> Path:
    """The feature cache of `dataset` for `target_spec`: the one with these layers and dtype, or the only one."""
    if layer_ids and dtype:
        return layout.cache_dir(dataset, target_spec, tuple(layer_ids), dtype)
    folder = layout.target_dir(dataset, target_spec)
    found = sorted(p for p in folder.glob("features-L*") if (p / "manifest.json").is_file()) if folder.is_dir() else []
    if layer_ids:
        found = [p for p in found if p.name.startswith(f"features-L{'-'.join(map(str, layer_ids))}-")]
    if dtype:
        found = [p for p in found if p.name.endswith(f"-{dtype}")]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DsparkError(f"dataset {dataset!r} has no finished feature cache for {target_spec!r} in {folder}; "
                          f"build one with `dspark data cache --target {target_spec} --dataset {dataset}`")
    raise DsparkError(f"dataset {dataset!r} has several feature caches for {target_spec!r} "
                      f"({', '.join(p.name for p in found)}); choose one with --layer-ids and --cache-dtype")


def _manifest_before(path: Path) -> dict | None:
    """The cache's manifest before a build (None: none, or one too damaged to read: the build repairs it)."""
    try:
        return read_json(path, JsonObject, fix="") if path.exists() else None
    except FileShapeError:
        return None
