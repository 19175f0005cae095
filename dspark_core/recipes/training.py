"""Stage 4, training: a DSpark, DFlash or Eagle3 draft on a target feature cache (or on features the target
computes while training: `online_features`), resumable, alone or as one rank of a torchrun job.

Runs live in `checkpoints/<target>/<algorithm>/<settings hash>/`, keyed by the training settings, the
data and the target revision: the same settings and data resume (or reuse) the same run; anything
changed trains a new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from safetensors import safe_open

from dspark_core.data.feature_cache import CacheConfig, FeatureCache
from dspark_core.data.online_features import OnlineFeatures, check_online_memory
from dspark_core.drafters.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_draft_config
from dspark_core.evaluation.plots import loss_curve
from dspark_core.models.spec import slugify
from dspark_core.models.target import TargetModel
from dspark_core.distributed import current_world
from dspark_core.paths import dspark_home
from dspark_core.training.parallel import ParallelConfig
from dspark_core.training.trainer import TrainConfig, settings_identity, train_draft

__all__ = ["ParallelConfig", "TrainConfig", "TrainReport", "train", "training_dir"]


@dataclass
class TrainReport:
    checkpoint: Path
    out_dir: Path
    algorithm: str
    steps: int
    final_metrics: dict
    history: list[dict]
    stored_parameters: int
    loss_curve: Path
    cache_samples: int
    #: files worth keeping with a tracking run: the loss curve, the checkpoint config, the metrics log
    artifacts: list[Path] = field(default_factory=list)
    #: the draft it grew from (`warm_start`'s lineage record; None for a first draft) and the line's totals
    parent: dict | None = None
    generation: int = 0
    cumulative_steps: int = 0
    cumulative_tokens: int = 0

    def to_json(self) -> dict:
        """Plain JSON values (paths as strings): what a stage run in another process sends back."""
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_json(cls, data: dict) -> "TrainReport":
        paths = {name: Path(data[name]) for name in ("checkpoint", "out_dir", "loss_curve")}
        return cls(**{**data, **paths, "artifacts": [Path(p) for p in data.get("artifacts", [])]})

    @property
    def analytic_acceptance(self) -> list[tuple[int, float | None]]:
        """(position k, acceptance on the last training batch), k = 1..γ."""
        found = {int(key.split("_")[1]): value for key, value in self.final_metrics.items() if key.startswith("accept_")}
        return [(k, found.get(k)) for k in range(1, max(found, default=0) + 1)]


def training_dir(target: TargetModel, cache: FeatureCache | OnlineFeatures, config: TrainConfig) -> Path:
    """Where a run with these settings on this data for this target lives."""
    fingerprint = {"training": settings_identity(config), "cache": str(cache.path),
                   "samples_hash": cache.manifest["samples_hash"],
                   "revision": target.revision}
    if isinstance(cache, OnlineFeatures):  # the features a cache's folder name would tell apart
        fingerprint["online"] = {key: cache.manifest[key] for key in ("layer_ids", "dtype", "max_length")}
    settings_hash = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return dspark_home() / "checkpoints" / slugify(target.spec) / config.algorithm / settings_hash


def train(target: TargetModel, cache_path: Path, config: TrainConfig, *, out_dir: Path | None = None,
          on_log: Callable[[int, dict], None] | None = None, progress: bool = True,
          parallel: ParallelConfig | None = None, online_features: CacheConfig | None = None) -> TrainReport:
    """Train (or resume, or reuse) a draft on the training split of the cache at `cache_path`; with
    `online_features` (the layers and precision a cache would hold), `cache_path` is the dataset's responses
    directory instead and the target computes the features batch by batch. Under torchrun every rank calls
    this; rank 0 writes the files."""
    world = current_world()
    parallel = parallel or ParallelConfig()
    if online_features is not None:
        data = OnlineFeatures.from_responses(target, cache_path, online_features)
        cache, validation = data.split("train"), data.split("validation")
        check_online_memory(target, parallel.plan(config.batch_size, world)[1], config.max_length,
                            len(cache.layer_ids))
    else:
        with world.main_first():  # rank 0 verifies the shards' checksums; the others then read them as they are
            cache = FeatureCache(cache_path, target_revision=target.revision, split="train", verify=world.is_main)
        validation = FeatureCache(cache_path, split="validation", verify=False)  # checksums were verified just above
    out_dir = Path(out_dir) if out_dir else training_dir(target, cache, config)
    result = train_draft(target, cache, out_dir, config, validation=validation, on_log=on_log, progress=progress,
                         parallel=parallel)
    plot = out_dir / "loss_curve.png"
    if world.is_main:
        loss_curve(result.history, plot, title=f"{config.algorithm} on {target.spec}")
    saved = read_draft_config(result.checkpoint)["training"]
    with safe_open(str(result.checkpoint / WEIGHTS_FILE), framework="pt") as handle:  # written before every rank returned
        parameters = sum(_numel(handle.get_slice(name).get_shape()) for name in handle.keys())
    return TrainReport(
        checkpoint=result.checkpoint, out_dir=out_dir, algorithm=config.algorithm, steps=result.steps,
        final_metrics=result.final_metrics, history=result.history, stored_parameters=parameters, loss_curve=plot,
        cache_samples=len(cache), artifacts=[plot, result.checkpoint / CONFIG_FILE, out_dir / "metrics.jsonl"],
        parent=saved.get("parent"), generation=int(saved.get("generation", 0)),
        cumulative_steps=int(saved.get("cumulative_steps", result.steps)),
        cumulative_tokens=int(saved.get("cumulative_tokens", 0)),
    )


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total
