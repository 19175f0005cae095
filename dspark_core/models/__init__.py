"""Target model registry: resolve a spec to a snapshot, load it, tap its features."""

from dspark_core.models.packaged import PACKAGED_MODELS
from dspark_core.models.snapshot import Snapshot, find_imported, list_snapshots, resolve_snapshot
from dspark_core.models.spec import ModelSource, parse_spec, slugify
from dspark_core.models.target import TargetFeatures, TargetModel, load_target

__all__ = [
    "PACKAGED_MODELS",
    "ModelSource",
    "Snapshot",
    "TargetFeatures",
    "TargetModel",
    "find_imported",
    "list_snapshots",
    "load_target",
    "parse_spec",
    "resolve_snapshot",
    "slugify",
]
