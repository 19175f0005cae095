"""The declared shape of every JSON file dspark reads back from disk, and the one way they are read.

A file of the right syntax but the wrong shape — a JSON list where an object belongs, a missing key, text where
a number belongs — is refused with one line that names the file, the field and the fix (`FileShapeError`), by
the schema rather than by the code that happens to read the field first.

Unknown fields: a dspark file may carry fields this version does not know (a newer version wrote it, or a person
added a note). They are ignored, and named once per file in an `UnknownFieldsWarning`, so that a misspelt field
is not silently without effect. Data lines in foreign formats (prompt sources: Spec-Bench, ShareGPT, a dataset's
own columns) are not dspark files: their other columns are expected and ignored without a warning.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, model_validator

from dspark_core.errors import DsparkError

Schema = TypeVar("Schema", bound=BaseModel)


class FileShapeError(DsparkError):
    """A file that parses as JSON but does not have the shape its schema declares."""


class UnknownFieldsWarning(UserWarning):
    """A dspark file with fields this version does not know; they are ignored."""


class Shape(BaseModel):
    """A record of a dspark file: unknown fields are kept (and warned about), known ones are checked."""

    model_config = ConfigDict(extra="allow", strict=True)  # strict: "5" is not a number, 1.0 not a count


class Foreign(BaseModel):
    """A record another tool wrote (a model's Hugging Face config): only the fields dspark reads are checked."""

    model_config = ConfigDict(extra="allow", strict=True)  # strict: "5" is not a number, 1.0 not a count


class OpenRecord(BaseModel):
    """A record whose other fields vary by design (the metrics of a training log line, settings recorded to be
    compared as a whole): they are kept, and never unknown."""

    model_config = ConfigDict(extra="allow", strict=True)  # strict: "5" is not a number, 1.0 not a count


class JsonObject(Foreign):
    """Any JSON object: a file read first for its format field, then checked against that format's schema."""


# ---- draft checkpoints and exports ----------------------------------------------------------------------
class DraftModuleConfig(Foreign):
    """The module config inside a draft config: its fields vary with the drafter (the drafter's config class
    checks them all when it is built); the shapes every drafter has are checked here."""

    hidden_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)


class DraftConfigFile(Shape):
    """config.json of a draft checkpoint (and the `source` of an export's dspark_export.json)."""

    format: str
    algorithm: str
    module: DraftModuleConfig
    target: str
    target_revision: str | None
    target_layer_ids: list[int] = Field(min_length=1)
    target_architectures: list[str] = []
    block_size: int = Field(ge=1)
    mask_token: str | None = None  # "learned" or "vocab" (DSpark, DFlash)
    head: str | None = None
    head_rank: int | None = None
    draft_vocab_size: int | None = None
    training: dict[str, Any] = {}
    code_version: str | None = None
    calibration: dict[str, Any] | None = None


class ExportRecordFile(Shape):
    """dspark_export.json of an export: its layout and the checkpoint config it was made from."""

    format: str
    source: DraftConfigFile


class ModelConfigFile(Foreign):
    """A Hugging Face config.json (a model's, or an export's in the speculators layout)."""


class ProposalMethod(Foreign):
    speculative_tokens: int = Field(ge=1)


class SpeculatorsSettings(Foreign):
    proposal_methods: list[ProposalMethod] = Field(min_length=1)


class SpeculatorsConfigFile(Foreign):
    """config.json of an export in the speculators layout: what serving reads from it."""

    speculators_config: SpeculatorsSettings


# ---- data -------------------------------------------------------------------------------------------------
class Message(Shape):
    role: Literal["system", "user", "assistant"]
    content: str


class PromptLine(Shape):
    """A line of a prompt file dspark wrote (prompts.jsonl of a dataset)."""

    id: str
    messages: list[Message] = Field(min_length=1)
    source: str
    split: Literal["train", "validation"]


class PromptSettingsFile(OpenRecord):
    """<prompts>.settings.json: the source settings a prompt file was written from in one go."""

    seed: int | None


class PromptRound(Shape):
    round: int = Field(ge=0)
    seed: int
    added: int = Field(ge=0)
    dropped: int = Field(ge=0)
    total: int = Field(ge=0)
    at: str | None


class PromptRoundsFile(Shape):
    """<prompts>.rounds.json: the source settings of a growing prompt file and every round it went through."""

    settings: dict[str, Any]
    rounds: list[PromptRound]


class ResponseLine(Shape):
    """A line of responses.jsonl: one conversation with the target's own answers."""

    id: str
    split: Literal["train", "validation"]
    source: str = ""
    messages: list[Message] = Field(min_length=1)
    response_tokens: list[int]
    finish_reasons: list[str | None] = []
    response_ids: list[list[int]] | None = None


class ResponsesManifestFile(Shape):
    """manifest.json of a regeneration directory."""

    target: str
    target_revision: str | None
    target_dtype: str | None = None
    settings: dict[str, Any]
    status: Literal["running", "complete"]
    started_at: str | None = None
    finished_at: str | None = None
    removed_stale_or_repeated: int = 0
    removed_damaged: list[str] = []
    server: dict[str, Any] | None = None
    conversations: int | None = None
    splits: dict[str, int] | None = None
    response_tokens: int | None = None
    skipped_too_long: list[str] = []
    seconds: float | None = None


class ShardEntry(Shape):
    file: str
    sha256: str
    ids: list[str]
    splits: list[Literal["train", "validation"]]
    tokens: int | None = None
    rank: int | None = None  # which rank of how many built the shard
    ranks: int | None = None
    copied_samples: int = 0

    @model_validator(mode="after")
    def _one_split_per_sample(self):
        if len(self.ids) != len(self.splits):
            raise ValueError(f"{len(self.ids)} ids but {len(self.splits)} splits")
        return self


class CacheManifestFile(Shape):
    """manifest.json of a feature cache."""

    format_version: int
    target: str
    target_revision: str | None
    layer_ids: list[int] = Field(min_length=1)
    hidden_size: int = Field(ge=1)
    dtype: str
    tokenizer_hash: str
    max_length: int = Field(ge=1)
    samples_hash: str
    status: Literal["complete"] = "complete"
    created_at: str | None = None
    num_samples: int = Field(ge=0)
    num_tokens: int = Field(ge=0)
    assistant_tokens: int | None = None
    target_dtype: str | None = None
    bytes: int | None = None
    ranks: int | None = None
    source: dict[str, Any] = {}
    shards: list[ShardEntry]
    # what a build from conversations, a grown dataset or a repair adds
    copied_samples: int | None = None
    rebuilt_shards: int | None = None
    dropped_without_assistant_tokens: int | None = None


class ShardProgressFile(Shape):
    """progress/shard-NNNNN.json of an unfinished feature-cache build: one finished shard."""

    spec: dict[str, Any]
    index: int = Field(ge=0)
    entry: ShardEntry


# ---- models -----------------------------------------------------------------------------------------------
class RetrainingRequest(Shape):
    at: str
    reason: str


class RegisteredModel(Shape):
    spec: str
    registered_at: str | None = None
    prompts: str | None = None
    retrain_requested: RetrainingRequest | None = None  # the latest request (a sensor turns it into runs)


class RegisteredModelsFile(RootModel[dict[str, RegisteredModel]]):
    """models/registered.json: slug -> the registered model."""


class SnapshotIndexEntry(Shape):
    snapshot: str
    fingerprint: Any = None


class SnapshotIndexFile(RootModel[dict[str, SnapshotIndexEntry]]):
    """models/index.json: spec -> the snapshot it was imported to (a cache; rebuilt when unreadable)."""


class SnapshotRecordFile(Shape):
    """snapshot.json of an imported model."""

    spec: str
    source_kind: str
    source: str
    revision: str
    hub_commit: str | None = None
    created_at: str | None = None
    transformers_version: str | None = None
    model_type: str | None = None
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    max_context: int | None = None
    has_chat_template: bool = False


class DerivedLineageFile(Shape):
    """derived.json of a derived model: its parent and how it was made."""

    parent: str
    parent_revision: str | None
    method: str
    settings: dict[str, Any]
    stats: dict[str, Any] = {}


# ---- training and measurements ------------------------------------------------------------------------------
class TrainingStateFile(Shape):
    """state/state.json of a training run: where to resume."""

    step: int = Field(ge=0)
    epoch: int = Field(ge=0)
    cursor: int = Field(ge=0)
    config: dict[str, Any]
    cache: str
    history: list[dict[str, Any]] = []
    world_size: int = 1
    tokens_trained: int = 0
    precision: Literal["float32", "bfloat16"] | None = None  # the forward pass's; absent before it was recorded


class TrainLogLine(OpenRecord):
    """A line of a training run's metrics.jsonl (metric names vary with the drafter: kept as they are)."""

    step: int


class StepCostProfileFile(Shape):
    """A step-cost profile (`dspark profile`): median pass times per batch shape."""

    target_spec: str
    target_revision: str | None
    device: str
    dtype: str
    torch_version: str
    context_tokens: int
    rows: list[int] = Field(min_length=1)
    widths: list[int] = Field(min_length=1)
    ms: list[list[float]]
    repetitions: int
    measured_at: str
    format: int

    @model_validator(mode="after")
    def _a_time_per_shape(self):
        if len(self.ms) != len(self.rows) or any(len(line) != len(self.widths) for line in self.ms):
            raise ValueError(f"ms must have {len(self.rows)} rows of {len(self.widths)} times")
        return self


class LockHolderFile(Shape):
    """.<dir>.holder.json: which process holds a directory."""

    pid: int
    command: str
    since: str


# ---- reading ------------------------------------------------------------------------------------------------
_warned: set[str] = set()


def checked(value: Any, schema: type[Schema], *, where: str | Path, fix: str) -> Any:
    """`value` (parsed JSON) as it is, once it has `schema`'s shape; else FileShapeError naming `where` (a file,
    or file:line), the first wrong field and `fix`. Unknown top-level fields are named once per `where`'s file."""
    try:
        parsed = schema.model_validate(value)
    except ValidationError as exc:
        raise FileShapeError(f"{where}: {_first_problem(exc)}; {fix}") from None
    _warn_unknown(parsed, where)
    return value


def read_json(path: Path, schema: type[Schema], *, fix: str) -> Any:
    """The JSON value in `path`, checked against `schema` (`checked`); unreadable or invalid JSON is a
    FileShapeError naming the file and `fix` too."""
    path = Path(path)
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FileShapeError(f"{path}: {'not valid JSON' if isinstance(exc, ValueError) else 'unreadable'} "
                             f"({_one_line(exc)}); {fix}") from None
    return checked(value, schema, where=path, fix=fix)


def parse_line(line: str | bytes, schema: type[Schema], *, where: str, fix: str) -> Any:
    """One JSONL line (`where` is file:line), parsed and checked like `read_json`."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise FileShapeError(f"{where}: not valid JSON ({_one_line(exc)}); {fix}") from None
    return checked(value, schema, where=where, fix=fix)


def _first_problem(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"])
    if first["type"] == "missing":
        message = "missing"
    elif first["type"] in ("model_type", "dict_type", "model_attributes_type"):
        message = f"expected a JSON object, got {_json_kind(first.get('input'))}"
    elif first["type"] == "list_type":
        message = f"expected a JSON list, got {_json_kind(first.get('input'))}"
    else:
        message = first["msg"][0].lower() + first["msg"][1:]
    problem = f"field {field!r}: {message}" if field else f"{message} (the whole file)"
    more = len(errors) - 1
    return _one_line(problem) + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _warn_unknown(parsed: BaseModel, where: str | Path) -> None:
    if isinstance(parsed, RootModel):
        for entry in (parsed.root.values() if isinstance(parsed.root, dict) else ()):
            if isinstance(entry, BaseModel):
                _warn_unknown(entry, where)
        return
    unknown = sorted(parsed.model_extra or {}) if isinstance(parsed, Shape) else []
    file = str(where).rsplit(":", 1)[0] if not isinstance(where, Path) else str(where)
    if unknown and file not in _warned:
        _warned.add(file)
        warnings.warn(f"{where}: ignoring field{'s' * (len(unknown) > 1)} this version of dspark does not know: "
                      f"{', '.join(map(repr, unknown))}", UnknownFieldsWarning, stacklevel=3)
