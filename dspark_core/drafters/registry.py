"""The drafter registry: everything the platform knows about a draft algorithm, in one place.

An algorithm is its module config class and module class, the runtime drafter that plugs it into the
decoding engine, the settings it fixes (DFlash: no sequential head, cross-entropy only), which of the
cached target layers it reads, and its tensor names in vLLM's speculators layout. Training, checkpoint
loading, export and the front ends all look algorithms up here; adding a drafter means adding its module
and one `DrafterKind` below.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from dspark_core.decoding.drafter import Drafter
from dspark_core.drafters import dspark, eagle3
from dspark_core.drafters.base import mask_token_id, target_dimensions
from dspark_core.drafters.runtime import DSparkDrafter, Eagle3Drafter
from dspark_core.errors import ConfigError


def every_layer(available: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(available)


@dataclass(frozen=True)
class DrafterKind:
    name: str
    description: str
    config_class: type
    module_class: type[nn.Module]
    runtime_class: type[Drafter]
    #: module settings this algorithm fixes, whatever the training config says
    module_settings: dict = field(default_factory=dict)
    #: training settings this algorithm fixes (`loss` holds LossWeights fields)
    training_settings: dict = field(default_factory=dict)
    #: training settings this algorithm picks where the training config leaves them empty
    training_defaults: dict = field(default_factory=dict)
    #: which of the cached target layers the draft reads
    select_layers: Callable[[tuple[int, ...]], tuple[int, ...]] = every_layer
    #: (our tensor-name pattern, speculators name) pairs, and the speculators architecture name
    speculators_names: tuple[tuple[str, str], ...] = ()
    speculators_architecture: str = ""
    #: copies the target's own layers into a fresh module (None: only random initialization)
    init_from_target: Callable[[nn.Module, object], None] | None = None
    #: module settings added after drafts were first saved: the value a saved config without them implies
    saved_defaults: dict = field(default_factory=dict)

    def module_config(self, target, **settings):
        """The module config for `target`: its attention geometry, the given settings this config class has,
        then the settings the algorithm fixes; a vocabulary mask token is the target's own special token."""
        known = {item.name for item in dataclasses.fields(self.config_class)}
        values = {**target_dimensions(target), **{k: v for k, v in settings.items() if k in known}}
        values.update(self.module_settings, algorithm=self.name)
        if values.get("mask_token") == "vocab" and values.get("mask_token_id") is None:
            values["mask_token_id"] = mask_token_id(target)  # the target's own special token
        return self.config_class(**values)

    def saved_config(self, module: dict):
        """The module config of a saved draft (checkpoint or export)."""
        return self.config_class(**{**self.saved_defaults, **module})

    def build(self, module_config) -> nn.Module:
        return self.module_class(module_config)

    def runtime(self, module: nn.Module, name: str | None = None) -> Drafter:
        """The engine drafter for a loaded module of this algorithm."""
        return self.runtime_class(module, name=name or self.name)

    def speculators_name(self, name: str) -> str:
        """Our tensor name in speculators' layout (names without a counterpart are kept)."""
        for pattern, replacement in self.speculators_names:
            if re.match(pattern, name):
                return re.sub(pattern, replacement, name)
        return name


DSPARK = DrafterKind(
    name="dspark",
    description="parallel block backbone + sequential (Markov/gated/RNN) head + confidence head",
    config_class=dspark.DSparkConfig, module_class=dspark.DSparkModel, runtime_class=DSparkDrafter,
    module_settings={"confidence": True},
    training_defaults={"sample_from_anchor": True},  # vLLM's dspark serves it (and the anchor slot drafts best)
    speculators_names=dspark.SPECULATORS_NAMES, speculators_architecture="DSparkSpeculator",
    init_from_target=dspark.init_from_target, saved_defaults={"head_vocab": "full", "qk_norm": False},
)
DFLASH = DrafterKind(
    name="dflash",
    description="parallel block backbone alone, trained with cross-entropy",
    config_class=dspark.DSparkConfig, module_class=dspark.DSparkModel, runtime_class=DSparkDrafter,
    module_settings={"head": "none", "confidence": False},
    training_settings={"head": "none", "loss": {"ce": 1.0, "tv": 0.0, "conf": 0.0}},
    training_defaults={"sample_from_anchor": False},  # the only layout vLLM's dflash serves
    speculators_names=dspark.SPECULATORS_NAMES, speculators_architecture="DFlashSpeculator",
    init_from_target=dspark.init_from_target, saved_defaults={"head_vocab": "full", "qk_norm": False},
)
EAGLE3 = DrafterKind(
    name="eagle3",
    description="one autoregressive layer on low/mid/high target features, training-time test",
    config_class=eagle3.Eagle3Config, module_class=eagle3.Eagle3Model, runtime_class=Eagle3Drafter,
    # its input already holds the target's state before the anchor
    training_settings={"head": "none", "anchor_state": False, "sample_from_anchor": True,
                       "loss": {"ce": 1.0, "tv": 0.0, "conf": 0.0}},
    select_layers=eagle3.low_mid_high,
    speculators_names=eagle3.SPECULATORS_NAMES, speculators_architecture="Eagle3Speculator",
)

DRAFTERS: dict[str, DrafterKind] = {kind.name: kind for kind in (DSPARK, DFLASH, EAGLE3)}
ALGORITHMS: tuple[str, ...] = tuple(DRAFTERS)


def drafter_kind(name: str) -> DrafterKind:
    """The registered algorithm `name`, or a ConfigError listing the choices."""
    try:
        return DRAFTERS[name]
    except KeyError:
        raise ConfigError(f"unknown drafter algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}") from None
