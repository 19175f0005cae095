"""Training for a wall-clock budget: time a few real steps of a configuration, then give it the number of
steps that fits. Comparing recipes at equal wall-clock (not equal steps) is what tells whether a costlier
step pays for itself."""

from __future__ import annotations

import time

import torch

from dspark_core.data.feature_cache import FeatureCache
from dspark_core.models.target import TargetModel
from dspark_core.training.trainer import Batcher, DraftTraining, TrainConfig


def seconds_per_step(target: TargetModel, cache: FeatureCache, config: TrainConfig, *, steps: int = 6,
                     warmup: int = 2) -> float:
    """Median wall time of a full training step (collate, forward, backward, clipping, optimizer) after a
    warm-up, through the training loop's own step."""
    run = DraftTraining(target, cache, config)
    batcher, times = Batcher(len(cache), config.batch_size, 0), []
    synchronize = torch.cuda.synchronize if target.device.type == "cuda" else (lambda: None)
    for step in range(steps + warmup):
        synchronize()
        started = time.perf_counter()
        run.step(step, batcher.next())
        synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def steps_for_budget(target: TargetModel, cache: FeatureCache, config: TrainConfig, seconds: float, *,
                     minimum: int = 20) -> int:
    """How many steps of `config` fit in `seconds` of training on this machine."""
    return max(minimum, int(seconds / seconds_per_step(target, cache, config)))
