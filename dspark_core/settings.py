"""Settings declared once: a dataclass field with its default *and* its help text.

The library's config dataclasses declare every user-facing setting with `setting(default, "help")`. The
front ends (the `dspark` command line, the Dagster config classes) read the default and the help from
here instead of repeating them, so the three can never disagree.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

#: γ a draft is trained for: block positions, tokens proposed per round. The one place this default lives.
#: The γ = 7 drafts of the CPU ablation never had a position past the third accepted on held-out data, and
#: training four instead of seven raised DSpark's held-out acceptance at the same wall-clock budget
#: (benchmarks/results/ablation-pass1.json).
DEFAULT_BLOCK_SIZE = 4

#: Draft tokens verified per round when decoding (at most the draft's γ). On the default device, a CPU,
#: verifying one or two tokens costs 1.1-1.2 autoregressive steps but four or more cost 1.6-1.9 (a step in the
#: target's cost, measured), so short rounds decode fastest until acceptance is much higher; on a GPU, where
#: verification is nearly free, raise it to the draft's γ.
DEFAULT_DECODE_BLOCK_SIZE = 2

_HELP = "help"
_BOUNDS = ("min", "max", "above", "below", "choices", "distinct")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory=dataclasses.MISSING, min: float | None = None,
            max: float | None = None, above: float | None = None, below: float | None = None,
            choices: tuple | None = None, distinct: bool | None = None) -> Any:
    """A dataclass field with a default (or a default factory), a one-line help text and its valid values:
    `min` / `max` inclusive, `above` / `below` exclusive, or one of `choices`; for a list of numbers the bounds hold
    for each, and `distinct` says no value may repeat. `check_settings` enforces them, the CLI options and the
    Dagster config fields declare them too."""
    metadata = {_HELP: help, **{key: value for key, value in
                                (("min", min), ("max", max), ("above", above), ("below", below), ("choices", choices),
                                 ("distinct", distinct)) if value is not None}}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def bounds_of(cls: type, name: str) -> dict[str, Any]:
    """The declared valid values of setting `name` of `cls`: any of min, max, above, choices."""
    return {key: value for key, value in _field(cls, name).metadata.items() if key in _BOUNDS}


def check_settings(config: Any) -> None:
    """Raise one ConfigError naming the first setting of `config` outside its declared values (NaN and infinity
    never are valid: no setting means "unbounded" by them). Config dataclasses call this first thing in
    `__post_init__`, before anything is written."""
    from dspark_core.errors import ConfigError

    for item in dataclasses.fields(config):
        value, bounds = getattr(config, item.name), bounds_of(type(config), item.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{item.name} must be a finite number, got {value}")
        if value is None or not bounds:
            continue
        if "choices" in bounds:
            if value not in bounds["choices"]:
                raise ConfigError(f"{item.name} must be one of {', '.join(map(str, bounds['choices']))}, got {value!r}")
            continue
        if isinstance(value, (list, tuple)):
            if bounds.get("distinct") and len(set(value)) < len(value):
                repeated = sorted({v for v in value if list(value).count(v) > 1})
                raise ConfigError(f"{item.name} lists {', '.join(map(str, repeated))} more than once, got "
                                  f"{','.join(map(str, value))}; give each value once")
            for element in value:
                _check_number(item.name, element, bounds)
            continue
        _check_number(item.name, value, bounds)


def _check_number(name: str, value: Any, bounds: dict) -> None:
    from dspark_core.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if "min" in bounds and value < bounds["min"]:
        raise ConfigError(f"{name} must be >= {bounds['min']}, got {value}")
    if "above" in bounds and value <= bounds["above"]:
        raise ConfigError(f"{name} must be > {bounds['above']}, got {value}")
    if "max" in bounds and value > bounds["max"]:
        raise ConfigError(f"{name} must be <= {bounds['max']}, got {value}")
    if "below" in bounds and value >= bounds["below"]:
        raise ConfigError(f"{name} must be < {bounds['below']}, got {value}")


def _field(cls: type, name: str) -> dataclasses.Field:
    for item in dataclasses.fields(cls):
        if item.name == name:
            return item
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def default_of(cls: type, name: str) -> Any:
    """The declared default of setting `name` of dataclass `cls` (a fresh value for factory defaults)."""
    item = _field(cls, name)
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


def help_of(cls: type, name: str) -> str:
    """The help text of setting `name` of dataclass `cls`."""
    return _field(cls, name).metadata.get(_HELP, "")


def documented_settings(cls: type) -> list[str]:
    """Names of the fields of `cls` declared with a help text (the user-facing settings)."""
    return [item.name for item in dataclasses.fields(cls) if item.metadata.get(_HELP)]
