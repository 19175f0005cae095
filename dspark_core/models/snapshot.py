"""Import a model spec once into an immutable, content-addressed safetensors snapshot under $DSPARK_HOME.

Layout:
    $DSPARK_HOME/models/snapshots/<slug>-<key12>/   config.json, model.safetensors, tokenizer files,
                                                    dspark_snapshot.json (source, revision, dims)
    $DSPARK_HOME/models/index.json                  spec -> snapshot name + source fingerprint
The fingerprint (path, size, mtime) lets later loads skip hashing; the key is the sha256 of the source
content, so the same weights reached through two specs share one snapshot.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from dspark_core.errors import ModelSpecError, UnsupportedModelError
from dspark_core.models.architecture import check_supported
from dspark_core.models.packaged import locate_packaged
from dspark_core.models.spec import ModelSource, parse_spec, slugify
from dspark_core.paths import atomic_directory, models_dir, write_json_atomic
from dspark_core.schemas import FileShapeError, SnapshotIndexFile, SnapshotRecordFile, read_json

SNAPSHOT_FILE = "dspark_snapshot.json"
_HASH_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Snapshot:
    """An imported model: a plain Hugging Face directory plus the record of where it came from."""

    path: Path
    info: dict

    @property
    def spec(self) -> str:
        return self.info["spec"]

    @property
    def revision(self) -> str:
        """sha256 of the source content the snapshot was made from."""
        return self.info["revision"]


def snapshots_dir() -> Path:
    path = models_dir() / "snapshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _index_path() -> Path:
    return models_dir() / "index.json"


def _read_index() -> dict:
    path = _index_path()
    if not path.exists():
        return {}
    try:
        return read_json(path, SnapshotIndexFile, fix="")
    except FileShapeError:
        # The index is only a cache of spec -> snapshot; rebuilding it costs a hash, nothing is lost.
        return {}


def _update_index(spec: str, entry: dict) -> None:
    index = _read_index()
    index[spec] = entry
    write_json_atomic(_index_path(), index)


def sha256_files(files: list[Path], root: Path | None = None) -> str:
    digest = hashlib.sha256()
    for file in sorted(files):
        name = str(file.relative_to(root)) if root else file.name
        digest.update(name.encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(files: list[Path]) -> list:
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(files)]


def _dir_content_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")]


def load_snapshot(path: Path) -> Snapshot:
    record = path / SNAPSHOT_FILE
    if not record.is_file():
        raise ModelSpecError(f"{path} is not a dspark model snapshot (no {SNAPSHOT_FILE}); re-import it with `dspark models import`")
    return Snapshot(path=path, info=read_json(record, SnapshotRecordFile,
                                              fix="the snapshot is damaged: import the model again with `dspark models import --refresh`"))


def list_snapshots() -> list[Snapshot]:
    return [load_snapshot(p) for p in sorted(snapshots_dir().iterdir()) if (p / SNAPSHOT_FILE).is_file()]


def find_imported(spec: str) -> Snapshot | None:
    """The snapshot a spec was imported to, if any (no hashing, no import)."""
    entry = _read_index().get(spec.strip())
    if entry and (snapshots_dir() / entry["snapshot"] / SNAPSHOT_FILE).is_file():
        return load_snapshot(snapshots_dir() / entry["snapshot"])
    return None


def resolve_snapshot(spec: str, *, refresh: bool = False) -> Snapshot:
    """Return the snapshot for `spec`, importing it first if needed (slow once, then seconds)."""
    source = parse_spec(spec)
    files, extra = _source_files(source)
    fingerprint = _fingerprint(files) if files else extra.get("fingerprint")
    entry = _read_index().get(source.spec)
    if not refresh and entry and entry.get("fingerprint") == fingerprint:
        path = snapshots_dir() / entry["snapshot"]
        if (path / SNAPSHOT_FILE).is_file():
            return load_snapshot(path)

    revision = extra.get("revision") or sha256_files(files, extra.get("root"))
    name = f"{slugify(source.spec)}-{revision[:12]}"
    path = snapshots_dir() / name
    if refresh or not (path / SNAPSHOT_FILE).is_file():
        _import(source, path, revision, extra)
    _update_index(source.spec, {"snapshot": name, "fingerprint": fingerprint})
    return load_snapshot(path)


def _source_files(source: ModelSource) -> tuple[list[Path], dict]:
    """The files whose content defines the model, plus kind-specific extras."""
    if source.kind == "packaged":
        gguf = locate_packaged(source.location)
        return [gguf], {"gguf": gguf}
    if source.kind == "gguf":
        return [Path(source.location)], {"gguf": Path(source.location)}
    if source.kind == "local_dir":
        root = Path(source.location)
        return _dir_content_files(root), {"root": root, "directory": root}
    if source.kind == "hub":
        directory, commit = _download_hub(source.location)
        return _dir_content_files(directory), {"root": directory, "directory": directory, "hub_commit": commit}
    if source.kind == "tiny":
        from dspark_core.models.tiny import tiny_revision

        revision = tiny_revision(source.location)
        return [], {"revision": revision, "fingerprint": revision}
    raise AssertionError(source.kind)


def _download_hub(repo_id: str) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download

    try:
        directory = Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"])
        )
    except Exception as exc:  # network errors, missing repos, gated repos: all need the same advice
        raise ModelSpecError(
            f"could not download Hugging Face model {repo_id!r} ({type(exc).__name__}: {exc}); check the id and your "
            f"network, or download it elsewhere and pass the local directory instead"
        ) from exc
    return directory, directory.name


def _import(source: ModelSource, path: Path, revision: str, extra: dict) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.kind == "tiny":
        from dspark_core.models.tiny import build_tiny

        model, tokenizer = build_tiny(source.location)
    else:
        if "gguf" in extra:
            gguf: Path = extra["gguf"]
            kwargs = {"gguf_file": gguf.name}
            location = gguf.parent
        else:
            # Safetensors only: never unpickle weights from a directory we did not write.
            kwargs = {"use_safetensors": True}
            location = extra["directory"]
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **kwargs)
        except (ValueError, KeyError, OSError) as exc:
            raise UnsupportedModelError(
                f"cannot load {source.spec!r} as a causal LM with transformers {transformers.__version__} "
                f"({type(exc).__name__}: {exc}); dspark supports decoder-only architectures that transformers can "
                f"load without trust_remote_code, with safetensors weights or a GGUF file"
            ) from exc
        # GGUF-loaded weights are already de-quantized floats; drop the marker that blocks save_pretrained.
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            model.is_quantized = False

    check_supported(model, source.spec)
    config = model.config.get_text_config()
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "spec": source.spec,
            "source_kind": source.kind,
            "source": source.location if source.kind != "packaged" else str(extra["gguf"]),
            "revision": revision,
            "hub_commit": extra.get("hub_commit"),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "transformers_version": transformers.__version__,
            "model_type": config.model_type,
            "num_layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "vocab_size": config.vocab_size,
            "max_context": getattr(config, "max_position_embeddings", None),
            "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
        }
        (tmp / SNAPSHOT_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
