"""Quality checks of pipeline artefacts. Each returns the list of problems found (empty = passed), so the
caller decides how to report them (a Dagster asset check, a CLI, a test)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from dspark_core.data.feature_cache import MANIFEST_FILE, FeatureCache, tokenizer_hash
from dspark_core.decoding.drafter import Drafter
from dspark_core.errors import DsparkError
from dspark_core.evaluation.speculative import EvalPrompt, EvalSettings, decode_prompts, mismatched_prompts
from dspark_core.models.target import TargetModel
from dspark_core.schemas import CacheManifestFile, FileShapeError, read_json
from dspark_core.settings import DEFAULT_BLOCK_SIZE, check_settings, setting


def non_finite_tensors(directory: Path) -> list[str]:
    """Names of tensors holding NaN or infinity, over every safetensors file in `directory`."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return [f"no .safetensors file in {directory}"]
    problems = []
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad = int((~torch.isfinite(tensor)).sum())
                    problems.append(f"{file.name}:{name} has {bad} non-finite values")
    return problems


def cache_problems(cache_path: Path, target: TargetModel) -> list[str]:
    """Does the feature cache belong to `target` (revision, tokenizer, hidden size, layers) and are its shards intact?"""
    manifest_path = Path(cache_path) / MANIFEST_FILE
    if not manifest_path.is_file():
        return [f"{cache_path} has no {MANIFEST_FILE}"]
    try:
        manifest = read_json(manifest_path, CacheManifestFile, fix="rebuild it with `dspark data cache`")
    except FileShapeError as exc:
        return [str(exc)]
    problems = []
    if manifest.get("target_revision") != target.revision:
        problems.append(f"built for revision {str(manifest.get('target_revision'))[:12]} of {manifest.get('target')!r}, "
                        f"the base model is revision {target.revision[:12]}")
    if manifest.get("tokenizer_hash") != tokenizer_hash(target.tokenizer):
        problems.append("tokenizer hash differs from the base model's tokenizer")
    if manifest.get("hidden_size") != target.hidden_size:
        problems.append(f"hidden size {manifest.get('hidden_size')} != the base model's {target.hidden_size}")
    bad_layers = [layer for layer in manifest.get("layer_ids", []) if not 0 <= layer < target.num_layers]
    if bad_layers:
        problems.append(f"layer ids {bad_layers} do not exist in a {target.num_layers}-layer model")
    if not problems:
        try:  # checksums of every shard
            FeatureCache(cache_path, verify=True)
        except DsparkError as exc:
            problems.append(str(exc))
    return problems


@dataclass(frozen=True)
class GreedyCheckConfig:
    """The losslessness check of a trained draft: greedy speculative output equals autoregressive output."""

    prompts: int = setting(3, "Held-out prompts decoded greedily both ways", min=1)
    max_new_tokens: int = setting(32, "Tokens generated per prompt", min=1)

    def __post_init__(self) -> None:
        check_settings(self)


def greedy_mismatches(target: TargetModel, drafter: Drafter, prompts: list[EvalPrompt], max_new_tokens: int = 32,
                      *, block_size: int = DEFAULT_BLOCK_SIZE, progress: bool = False) -> list[str]:
    """Ids of prompts where greedy speculative output differs from autoregressive output (must be none)."""
    settings = EvalSettings(max_new_tokens=max_new_tokens, temperature=0.0, block_size=block_size)
    reference = decode_prompts(target, None, prompts, settings, desc="autoregressive", progress=progress)
    speculative = decode_prompts(target, drafter, prompts, settings, desc="speculative", progress=progress)
    return mismatched_prompts(speculative, reference)
