"""User-facing errors. Each message names the offending input and what to do about it."""


class DsparkError(Exception):
    """Base class for errors caused by user input or environment, shown without a traceback by the CLI."""


class ModelSpecError(DsparkError):
    """A model spec that cannot be resolved (unknown alias, missing path, missing package, offline hub)."""


class UnsupportedModelError(DsparkError):
    """A model that loads but that the platform cannot drive (architecture without decoder layers, ...)."""


class VocabularyMismatchError(DsparkError):
    """Drafter and target tokenizers differ, so draft token ids would mean different text."""


class PromptError(DsparkError):
    """An empty prompt, or a prompt that does not fit in the target's context window."""


class DrafterSpecError(DsparkError):
    """A `--drafter` value that names no known drafter."""


class ConfigError(DsparkError, ValueError):
    """An out-of-range setting (temperature, top-p, block size, ...)."""
