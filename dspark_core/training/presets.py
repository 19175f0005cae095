"""Named training presets: the CPU recipe (the defaults) and the reference recipe (what DeepSeek's DeepSpec trains
for Qwen3 targets), per algorithm. A preset is a set of TrainConfig settings; settings given explicitly override it.

The reference recipe (DeepSpec's Qwen3-4B configs, all three drafters on the same target layers):

| | DSpark | DFlash | Eagle3 |
|---|---|---|---|
| draft layers | 5 | 5 | 1 |
| block size / training-time-test steps | 7 | 7 | 7 |
| anchors per sequence, max length | 512, 4096 | 512, 4096 | every position, 4096 |
| loss | 0.1 CE + 0.9 L1 + 1.0 confidence | CE | soft CE to the target's distribution |
| position decay | exp(-k/4) | exp(-k/4) | 0.8^k = exp(-k/4.48) |
| hidden-state regression | none | none | none |
| vocabulary | full | full | full |
| target layers | 5, evenly from layer 1 to L-3 | the same | the same |
| optimizer | AdamW (0.9, 0.999), no weight decay, warmup 4% of the steps, peak 6e-4, cosine | the same | the same |

Batch size and steps are not part of a preset: the reference trains a global batch of 512 sequences for 10
epochs on a GPU node, which is a choice of scale (`--batch-size`, `--steps`), not of recipe.
"""

from __future__ import annotations

import math

from dspark_core.data.feature_cache import default_layer_ids
from dspark_core.errors import ConfigError
from dspark_core.training.losses import LossWeights
from dspark_core.training.trainer import TrainConfig

PRESETS = ("cpu", "reference")
PRESET_HELP = ("Training recipe: 'cpu' (the defaults: tuned for drafts trained in minutes on a CPU) or 'reference' "
               "(what DeepSpec trains: 5-layer blocks of 7, 512 anchors (Eagle3: every position), no hidden-state "
               "regression, Eagle3 with soft cross-entropy on 5 target layers, full vocabulary, AdamW (0.9, 0.999) "
               "without weight decay). Settings given explicitly override the preset's")

#: the reference's Eagle3 step weights 0.8^k as our position weights exp(-k/g)
EAGLE3_REFERENCE_DECAY = -1.0 / math.log(0.8)


def preset_settings(preset: str, algorithm: str, num_target_layers: int, vocab_size: int) -> dict:
    """TrainConfig keyword settings of `preset` for `algorithm` on a target of `num_target_layers` layers and a
    vocabulary of `vocab_size` tokens ("loss" holds LossWeights fields)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown training preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if preset == "cpu":
        return {}
    shared = {"block_size": 7, "max_length": 4096, "draft_vocab_size": vocab_size, "weight_decay": 0.0,
              "adam_beta1": 0.9, "adam_beta2": 0.999, "warmup_ratio": 0.04, "learning_rate": 6e-4,
              "layer_ids": default_layer_ids(num_target_layers, 5)}
    if algorithm == "eagle3":  # its training-time test supervises every position (anchors are drawn without repeats)
        return {**shared, "anchors_per_sequence": 4096,
                "loss": {"ce_target": "distribution", "decay": EAGLE3_REFERENCE_DECAY, "feature": 0.0}}
    block = {**shared, "num_layers": 5, "anchors_per_sequence": 512}
    if algorithm == "dflash":  # cross-entropy alone is what DFlash fixes
        return {**block, "loss": {"decay": 4.0, "feature": 0.0}}
    return {**block, "head": "markov", "head_rank": 256,
            "loss": {"ce": 0.1, "tv": 0.9, "conf": 1.0, "decay": 4.0, "feature": 0.0}}


def apply_preset(preset: str, algorithm: str, num_target_layers: int, vocab_size: int, given: dict) -> dict:
    """`preset`'s settings overridden by the `given` ones (TrainConfig keywords; "loss" merged field by field)."""
    settings = preset_settings(preset, algorithm, num_target_layers, vocab_size)
    loss = {**settings.pop("loss", {}), **given.get("loss", {})}
    merged = {**settings, **{key: value for key, value in given.items() if key != "loss"}}
    if "warmup_steps" in given and "warmup_ratio" not in given:  # an explicit warmup wins over the preset's share
        merged.pop("warmup_ratio", None)
    if loss:
        merged["loss"] = loss
    return merged


def preset_config(preset: str, target, **given) -> TrainConfig:
    """The TrainConfig of `preset` for `target` (its depth and vocabulary), with the `given` settings over it
    (`algorithm` among them; `loss` a dict of LossWeights fields)."""
    algorithm = given.get("algorithm", TrainConfig.algorithm)
    return train_config(apply_preset(preset, algorithm, target.num_layers, target.vocab_size, given))


def train_config(settings: dict) -> TrainConfig:
    """A TrainConfig from keyword settings whose `loss` is a dict of LossWeights fields."""
    values = dict(settings)
    if "loss" in values:
        values["loss"] = LossWeights(**values["loss"])
    return TrainConfig(**values)


#: the differences between the `cpu` and `reference` presets, one rung each, in the order a ladder climbs them
#: ("loss.x": a LossWeights field); each rung adds the reference's values of its settings to the rungs below it
LADDER = (
    ("cpu", ()),
    ("no-regression", ("loss.feature",)),
    ("optimizer", ("adam_beta1", "adam_beta2", "weight_decay", "warmup_ratio", "learning_rate")),
    ("full-vocab", ("draft_vocab_size",)),
    ("target-layers", ("layer_ids",)),
    ("block-7", ("block_size",)),
    ("anchors", ("anchors_per_sequence", "max_length")),
    ("soft-ce", ("loss.ce_target", "loss.decay")),
    ("losses", ("loss.ce", "loss.tv", "loss.conf", "head", "head_rank")),
    ("depth-5", ("num_layers",)),
)


def ladder(algorithm: str, num_target_layers: int, vocab_size: int,
           given: dict | None = None) -> list[tuple[str, dict]]:
    """The rungs from the `cpu` preset to the `reference` one for `algorithm`: (name, TrainConfig keyword settings
    with `given` over them). A rung that changes nothing for this algorithm (DSpark's cross-entropy is already to
    the token; Eagle3 has one layer) is left out; the last rung is the reference preset."""
    reference = preset_settings("reference", algorithm, num_target_layers, vocab_size)
    flat = {**{key: value for key, value in reference.items() if key != "loss"},
            **{f"loss.{key}": value for key, value in reference.get("loss", {}).items()}}
    rungs, chosen, previous = [], {}, None
    for name, keys in LADDER:
        chosen.update({key: flat[key] for key in keys if key in flat})
        settings = {key: value for key, value in chosen.items() if not key.startswith("loss.")}
        loss = {key.removeprefix("loss."): value for key, value in chosen.items() if key.startswith("loss.")}
        settings = apply_preset("cpu", algorithm, num_target_layers, vocab_size,
                                {**settings, **({"loss": loss} if loss else {}), **(given or {}),
                                 "algorithm": algorithm})
        config = train_config(settings)
        if previous is None or config != previous:
            rungs.append((name, settings))
        previous = config
    return rungs
