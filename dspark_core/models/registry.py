"""Registered base models: the list the platform trains and evaluates drafts for.

Stored as `$DSPARK_HOME/models/registered.json` ({slug: {"spec", "registered_at", "prompts"?}}); slugs are
the partition keys the pipelines use (Dagster dislikes '/'). `prompts` is the model's prompt source for the
pipelines when it differs from the default (self-generated prompts need an instruction-tuned model with a
chat template; a base model needs a JSONL file or a dataset).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from dspark_core.errors import ModelSpecError
from dspark_core.models.spec import parse_spec, slugify
from dspark_core.paths import models_dir, write_json_atomic
from dspark_core.schemas import RegisteredModelsFile, read_json


def _path():
    return models_dir() / "registered.json"


def registered_models() -> dict[str, dict]:
    path = _path()
    if not path.exists():
        return {}
    return read_json(path, RegisteredModelsFile, fix="fix or delete it and register the models again")


@contextmanager
def _updating() -> Iterator[dict[str, dict]]:
    """The registry for a read-modify-write: one process at a time (a CLI command next to a Dagster sensor or a
    transfer run), so that no update overwrites another; the others wait (updates take milliseconds)."""
    from filelock import FileLock, Timeout

    lock = FileLock(models_dir() / ".registered.json.lock")
    try:
        lock.acquire(timeout=60)
    except Timeout:
        raise ModelSpecError(f"{_path()} stayed locked by another process for 60 s; retry when it has finished") from None
    try:
        models = registered_models()
        before = json.dumps(models, sort_keys=True)
        yield models
        if json.dumps(models, sort_keys=True) != before:
            write_json_atomic(_path(), models)
    finally:
        lock.release()


def register_model(spec: str, prompts: str | None = None) -> str:
    """Add `spec` to the registry (idempotent); returns its slug. The spec must parse (not necessarily import).
    `prompts` sets (or, given again, replaces) the model's prompt source for the pipelines."""
    with _updating() as models:
        return _register(models, spec, prompts)


def _register(models: dict[str, dict], spec: str, prompts: str | None) -> str:
    source = parse_spec(spec)
    slug = slugify(source.spec)
    existing = models.get(slug)
    if existing and existing["spec"] != source.spec:
        raise ModelSpecError(f"slug {slug!r} is already taken by {existing['spec']!r}; register {spec!r} under another spelling")
    entry = dict(existing or {"spec": source.spec,
                              "registered_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    if prompts:
        entry["prompts"] = _checked_prompt_source(prompts)
    models[slug] = entry
    return slug


def _checked_prompt_source(prompts: str) -> str:
    """`self` and `hf:` sources as given; a file must exist and is stored as an absolute path, because the
    pipelines read it later from another working directory."""
    if prompts == "self" or prompts.startswith("hf:"):
        return prompts
    path = Path(prompts).expanduser().resolve()
    if not path.is_file():
        raise ModelSpecError(f"prompt source {prompts!r} is not a file; give a .jsonl file, 'hf:NAME' or 'self'")
    return str(path)


def prompt_source_for(slug: str) -> str | None:
    """The prompt source registered with the model, if any."""
    return registered_models().get(slug, {}).get("prompts")


def spec_for(slug: str) -> str:
    models = registered_models()
    if slug not in models:
        raise ModelSpecError(f"no registered base model has the key {slug!r}; register it with `dspark models register SPEC`")
    return models[slug]["spec"]


def request_retraining(spec: str, reason: str) -> str:
    """Ask the platform to train drafts for `spec` (registered first if needed): stamps its entry, and the
    sensor that handles new base models requests its data-preparation run (training follows). Returns the slug."""
    with _updating() as models:
        slug = _register(models, spec, None)
        models[slug]["retrain_requested"] = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                             "reason": reason}
    return slug


def retraining_requests() -> dict[str, dict]:
    """{slug: {"at", "reason"}} of every registered model whose retraining was requested (the latest request)."""
    return {slug: entry["retrain_requested"] for slug, entry in registered_models().items()
            if "retrain_requested" in entry}
