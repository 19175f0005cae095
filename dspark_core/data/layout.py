"""Where datasets live under $DSPARK_HOME:

    data/<dataset>/prompts.jsonl                              prompts with their split
    data/<dataset>/<target-slug>/responses/                   the target's answers (+ manifest)
    data/<dataset>/<target-slug>/features-L<ids>-<dtype>/     the target feature cache
"""

from __future__ import annotations

from pathlib import Path

from dspark_core.models.spec import slugify
from dspark_core.paths import dspark_home


def dataset_dir(dataset: str) -> Path:
    return dspark_home() / "data" / slugify(dataset)


def prompts_path(dataset: str) -> Path:
    return dataset_dir(dataset) / "prompts.jsonl"


def target_dir(dataset: str, target_spec: str) -> Path:
    """What one target made of the dataset: its responses and its feature caches."""
    return dataset_dir(dataset) / slugify(target_spec)


def responses_dir(dataset: str, target_spec: str) -> Path:
    return target_dir(dataset, target_spec) / "responses"


def cache_dir(dataset: str, target_spec: str, layer_ids: tuple[int, ...], dtype: str) -> Path:
    return target_dir(dataset, target_spec) / f"features-L{'-'.join(map(str, layer_ids))}-{dtype}"
