"""Where datasets live under $DSPARK_HOME:

    data/<dataset>/prompts.jsonl                              prompts with their split
    data/<dataset>/<target-slug>/responses/                   the target's answers (+ manifest)
    data/<dataset>/<target-slug>/features-L<ids>-<dtype>/     the target feature cache
"""

from __future__ import annotations

import re
from pathlib import Path

from dspark_core.errors import ConfigError
from dspark_core.models.spec import slugify
from dspark_core.paths import dspark_home

_DATASET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
MAX_DATASET_NAME = 100


def check_dataset_name(dataset: str) -> str:
    """A dataset name is its folder's name, so two different names never share a folder: lowercase letters,
    digits, '.', '_' and '-', starting with a letter or digit."""
    if len(dataset or "") > MAX_DATASET_NAME:  # a folder name, and part of others: file systems stop at 255 bytes
        raise ConfigError(f"dataset name {dataset[:40]!r}... has {len(dataset)} characters; use at most "
                          f"{MAX_DATASET_NAME}")
    if not _DATASET_NAME.fullmatch(dataset or ""):
        hint = slugify(dataset or "")
        raise ConfigError(f"dataset name {dataset!r} is not usable as a folder name as it is; use lowercase letters, "
                          f"digits, '.', '_' or '-', starting with a letter or digit (e.g. {hint!r})")
    return dataset


def dataset_dir(dataset: str) -> Path:
    return dspark_home() / "data" / check_dataset_name(dataset)


def prompts_path(dataset: str) -> Path:
    return dataset_dir(dataset) / "prompts.jsonl"


def target_dir(dataset: str, target_spec: str) -> Path:
    """What one target made of the dataset: its responses and its feature caches."""
    return dataset_dir(dataset) / slugify(target_spec)


def responses_dir(dataset: str, target_spec: str) -> Path:
    return target_dir(dataset, target_spec) / "responses"


def cache_dir(dataset: str, target_spec: str, layer_ids: tuple[int, ...], dtype: str) -> Path:
    return target_dir(dataset, target_spec) / f"features-L{'-'.join(map(str, layer_ids))}-{dtype}"
