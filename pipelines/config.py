"""Launchpad config of every asset and check. Each field mirrors a setting of a library config dataclass:
its default and its description (shown in the Dagster UI) are read from there, never repeated here."""

from __future__ import annotations

from typing import ClassVar

import dagster as dg
from pydantic import Field

from dspark_core.data.feature_cache import CacheConfig
from dspark_core.data.regenerate import RegenerationConfig
from dspark_core.data.sources import PromptsConfig
from dspark_core.evaluation.checks import GreedyCheckConfig
from dspark_core.recipes.calibration import CalibrationConfig
from dspark_core.recipes.champion import ChampionPolicy
from dspark_core.recipes.evaluation import EvalConfig
from dspark_core.recipes.export import ExportConfig
from dspark_core.recipes.transfer import TransferConfig
from dspark_core.settings import bounds_of, default_of, help_of
from dspark_core.training.presets import PRESET_HELP, PRESETS, preset_config
from dspark_core.training.trainer import TrainConfig
from dspark_core.training.warm_start import Parent, parent_settings


def core_field(cls: type, name: str):
    """A config field with the default, description and range of setting `name` of library dataclass `cls` (the
    Launchpad refuses a value outside it before the run starts)."""
    default = default_of(cls, name)
    bounds = bounds_of(cls, name)
    limits = {pydantic: bounds[key] for key, pydantic in (("min", "ge"), ("max", "le"), ("above", "gt"), ("below", "lt")) if key in bounds}
    description = help_of(cls, name) + (f" ({', '.join(map(str, bounds['choices']))})" if "choices" in bounds else "")
    if isinstance(default, (tuple, list)):
        return Field(default_factory=lambda: list(default), description=description)
    return Field(default=default, description=description, **limits)


class CoreConfig(dg.Config):
    """A Launchpad config whose fields are settings of the library dataclass `core`."""

    core: ClassVar[type]

    def to_core(self, **extra):
        """The library config: these fields plus `extra` (settings the platform decides, e.g. the dataset name)."""
        values = {name: tuple(v) if isinstance(v, list) else v for name, v in self.model_dump().items()}
        return self.core(**{**values, **extra})


class PromptDatasetConfig(CoreConfig):
    core: ClassVar[type] = PromptsConfig
    dataset: str = core_field(PromptsConfig, "dataset")
    # Empty means more here than in the library: the source registered with the model comes first.
    source: str | None = Field(default=default_of(PromptsConfig, "source"), description=(
        "Prompt source: a .jsonl file, 'hf:NAME_OR_PATH' or 'self' (the model writes user requests itself, offline; "
        "needs a chat template); empty: the source registered with the model (`dspark models register SPEC "
        "--prompts SOURCE`), else 'self'"))
    count: int = core_field(PromptsConfig, "count")
    domains: list[str] = core_field(PromptsConfig, "domains")
    limit: int | None = core_field(PromptsConfig, "limit")
    validation_fraction: float = core_field(PromptsConfig, "validation_fraction")
    seed: int = core_field(PromptsConfig, "seed")
    grow: bool = core_field(PromptsConfig, "grow")
    max_prompts: int | None = core_field(PromptsConfig, "max_prompts")
    at_cap: str = core_field(PromptsConfig, "at_cap")


class TargetResponsesConfig(CoreConfig):
    core: ClassVar[type] = RegenerationConfig
    max_new_tokens: int = core_field(RegenerationConfig, "max_new_tokens")
    batch_size: int = core_field(RegenerationConfig, "batch_size")
    seed: int = core_field(RegenerationConfig, "seed")
    temperature: float | None = core_field(RegenerationConfig, "temperature")
    top_p: float | None = core_field(RegenerationConfig, "top_p")
    top_k: int | None = core_field(RegenerationConfig, "top_k")
    server: str | None = core_field(RegenerationConfig, "server")
    server_model: str | None = core_field(RegenerationConfig, "server_model")
    concurrency: int = core_field(RegenerationConfig, "concurrency")


class FeatureCacheConfig(CoreConfig):
    core: ClassVar[type] = CacheConfig
    layer_ids: list[int] = core_field(CacheConfig, "layer_ids")
    num_layers: int = core_field(CacheConfig, "num_layers")
    dtype: str = core_field(CacheConfig, "dtype")
    max_length: int = core_field(CacheConfig, "max_length")


class DraftTrainingConfig(CoreConfig):
    core: ClassVar[type] = TrainConfig
    preset: str = Field(default="cpu", description=PRESET_HELP + "; the fields below left at their defaults take "
                                                                 "the preset's values")
    steps: int = core_field(TrainConfig, "steps")
    batch_size: int = core_field(TrainConfig, "batch_size")
    anchors_per_sequence: int = core_field(TrainConfig, "anchors_per_sequence")
    learning_rate: float = core_field(TrainConfig, "learning_rate")
    num_layers: int = core_field(TrainConfig, "num_layers")
    block_size: int = core_field(TrainConfig, "block_size")
    head: str = core_field(TrainConfig, "head")
    draft_vocab_size: int = core_field(TrainConfig, "draft_vocab_size")
    mask_token: str = core_field(TrainConfig, "mask_token")
    qk_norm: bool = core_field(TrainConfig, "qk_norm")
    sample_from_anchor: bool | None = core_field(TrainConfig, "sample_from_anchor")
    seed: int = core_field(TrainConfig, "seed")
    autocast: str = core_field(TrainConfig, "autocast")
    compile: bool = core_field(TrainConfig, "compile")
    continue_from: str = Field(default="auto", description=(
        "Where training starts: 'auto' (continue from the base model's champion when it is this drafter, else from "
        "this drafter's newest registered version, else from scratch; a version of another shape than the "
        "settings here is skipped), 'none' (from scratch), or the path of a draft checkpoint or export"))

    def training_config(self, target, algorithm: str, parent: Parent | None = None) -> TrainConfig:
        """The library config for `target`: the preset, with the fields set away from their defaults over it; with
        a `parent` to continue from, its shape (depth, block, head, vocabulary, layers) under those fields."""
        if self.preset not in PRESETS:
            raise dg.Failure(f"unknown training preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        changed = {name: tuple(v) if isinstance(v, list) else v for name, v in self.model_dump().items()
                   if name not in ("preset", "continue_from") and v != default_of(TrainConfig, name)}
        if parent is not None:  # (the partition's drafter, which `auto` matched to the parent's)
            changed = {**parent_settings(parent), **changed, "warm_start": str(parent.path)}
        return preset_config(self.preset, target, **{**changed, "algorithm": algorithm})


class ExportDraftConfig(CoreConfig):
    core: ClassVar[type] = ExportConfig
    format: str = core_field(ExportConfig, "format")


class SpeculativeEvalConfig(CoreConfig):
    core: ClassVar[type] = EvalConfig
    suites: list[str] = core_field(EvalConfig, "suites")
    max_prompts: int = core_field(EvalConfig, "max_prompts")
    max_new_tokens: int = core_field(EvalConfig, "max_new_tokens")
    temperature: float = core_field(EvalConfig, "temperature")
    seed: int = core_field(EvalConfig, "seed")
    block_size: int | None = core_field(EvalConfig, "block_size")
    schedule: str = core_field(EvalConfig, "schedule")
    threshold: float = core_field(EvalConfig, "threshold")


class TransferReportConfig(CoreConfig):
    core: ClassVar[type] = TransferConfig
    suites: list[str] = core_field(TransferConfig, "suites")
    max_prompts: int = core_field(TransferConfig, "max_prompts")
    max_new_tokens: int = core_field(TransferConfig, "max_new_tokens")
    temperature: float = core_field(TransferConfig, "temperature")
    block_size: int | None = core_field(TransferConfig, "block_size")
    seed: int = core_field(TransferConfig, "seed")
    retention_threshold: float = core_field(TransferConfig, "retention_threshold")


class CalibratedDraftConfig(CoreConfig):
    core: ClassVar[type] = CalibrationConfig
    suite: str = core_field(CalibrationConfig, "suite")
    max_prompts: int = core_field(CalibrationConfig, "max_prompts")
    max_new_tokens: int = core_field(CalibrationConfig, "max_new_tokens")
    test_fraction: float = core_field(CalibrationConfig, "test_fraction")
    temperature: float = core_field(CalibrationConfig, "temperature")
    bins: int = core_field(CalibrationConfig, "bins")
    method: str = core_field(CalibrationConfig, "method")


class LosslessCheckConfig(CoreConfig):
    core: ClassVar[type] = GreedyCheckConfig
    prompts: int = core_field(GreedyCheckConfig, "prompts")
    max_new_tokens: int = core_field(GreedyCheckConfig, "max_new_tokens")


class ChampionCheckConfig(CoreConfig):
    """The blocking τ check's part of the champion rule."""

    core: ClassVar[type] = ChampionPolicy
    tau_margin: float = core_field(ChampionPolicy, "tau_margin")


class ChampionPromotionConfig(CoreConfig):
    """The promotion's part of the champion rule: the speed a draft needs to be served."""

    core: ClassVar[type] = ChampionPolicy
    min_speedup: float = core_field(ChampionPolicy, "min_speedup")
