"""The target feature cache: what the drafters train on, computed once per (target, layers, data).

Directory layout:
    manifest.json            target + revision, layer ids, hidden size, dtype, tokenizer hash, max length,
                             counts and one entry per shard (sample ids, splits, sha256, the rank that built
                             it); written last
    shard-00000.safetensors  input_ids [T] int32, loss_mask [T] uint8, offsets [n+1] int64,
                             layers [T, m*d] (the chosen layers' outputs, concatenated), last_hidden [T, d],
                             lse [T] float32 (log-sum-exp of the target's logits from the stored last_hidden)
    progress/shard-00000.json  while the build is unfinished: one file per finished shard (its entry), written
                             by the rank that built the shard; removed once the manifest is written
Shards are written atomically one by one, so a killed build resumes with the shards still missing. Several
ranks (torchrun) split the shards between them: the shard plan is the same on every rank, rank 0 inspects the
directory first and merges the entries into the manifest last; a rerun, with any number of ranks, reuses
every finished shard whose checksum matches. Readers memory-map shards and validate the manifest against what
the caller expects; checksums catch corruption.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from dspark_core.data.chat import tokenize_conversations
from dspark_core.distributed import World, current_world
from dspark_core.errors import ConfigError, DsparkError
from dspark_core.models.target import TargetModel
from dspark_core.paths import save_tensors, write_json_atomic
from dspark_core.schemas import (
    CacheManifestFile,
    FileShapeError,
    JsonObject,
    ShardEntry,
    ShardProgressFile,
    checked,
    read_json,
)
from dspark_core.settings import check_settings, setting

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
_REBUILD = "the cache is damaged: rebuild it with `dspark data cache` (it rebuilds only what is damaged)"
#: one file per finished shard of an unfinished build
PROGRESS_DIR = "progress"
#: the unfinished build's record of single-process builds before ranks existed (still resumed from)
LEGACY_PROGRESS_FILE = "progress.json"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class CacheMismatchError(DsparkError):
    """A cache built for another target, other layers or another tokenizer."""


class CorruptCacheError(DsparkError):
    """A shard whose bytes do not match the manifest's checksum (or that cannot be read)."""


def tokenizer_hash(tokenizer) -> str:
    payload = json.dumps(sorted(tokenizer.get_vocab().items())) + (tokenizer.chat_template or "")
    return hashlib.sha256(payload.encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


#: free disk a build wants beyond its estimated size
DISK_MARGIN = 1.05


def cache_bytes_per_token(hidden_size: int, num_layers: int, dtype: str) -> int:
    """The layers and the pre-LM-head state in the storage dtype, the token id, its mask bit and the log-normalizer."""
    return (num_layers + 1) * hidden_size * _DTYPES[dtype].itemsize + 4 + 1 + 4


def estimate_cache_bytes(num_tokens: int, hidden_size: int, num_layers: int, dtype: str) -> int:
    return num_tokens * cache_bytes_per_token(hidden_size, num_layers, dtype)


@dataclass(frozen=True)
class CacheConfig:
    """Which target features are cached, and how."""

    layer_ids: tuple[int, ...] = setting((), "Decoder layers to cache; empty: `num_layers` spread over the depth",
                                         min=0, distinct=True)
    num_layers: int = setting(5, "How many layers to spread over the depth when layer_ids is empty", min=1)
    dtype: str = setting("bfloat16", "Storage dtype: bfloat16, float16 or float32", choices=("bfloat16", "float16", "float32"))
    max_length: int = setting(1024, "Truncate conversations to this many tokens", min=2)
    #: tokens per shard (a shard is the unit of atomic writing and resuming)
    shard_tokens: int = 262_144
    #: tokens per target forward batch
    batch_tokens: int = 4096

    def __post_init__(self) -> None:
        check_settings(self)
        object.__setattr__(self, "layer_ids", tuple(self.layer_ids))
        if self.dtype not in _DTYPES:
            raise ConfigError(f"cache dtype {self.dtype!r} is not one of {sorted(_DTYPES)}")
        if self.max_length < 2 or self.num_layers < 1:
            raise ConfigError(f"max_length must be >= 2 and num_layers >= 1, got {self.max_length} and {self.num_layers}")

    def layers_for(self, num_target_layers: int) -> tuple[int, ...]:
        """The configured layers, or `num_layers` spread over a target of that depth."""
        return self.layer_ids or default_layer_ids(num_target_layers, self.num_layers)


def default_layer_ids(num_layers: int, count: int = 5) -> tuple[int, ...]:
    """`count` layers spread evenly over the depth, from the second layer to the third-to-last."""
    first, last = 1, max(1, num_layers - 3)
    if count == 1:
        return (last,)
    return tuple(sorted({round(first + i * (last - first) / (count - 1)) for i in range(count)}))


def build_feature_cache(
    target: TargetModel,
    conversations: list[dict],
    out_dir: Path,
    config: CacheConfig,
    *,
    source: dict | None = None,
    progress: bool = True,
    world: World | None = None,
    force: bool = False,
) -> dict:
    """Tokenize conversations (assistant-token mask), run the target, and write the cache (or reuse, repair,
    resume or update it; `force`: anew). Returns the manifest.

    Under a process group (`world`, by default the one this process joined) every rank calls it with the same
    conversations: each builds its share of the shards, and every rank returns the merged manifest."""
    world = world or current_world()
    samples = tokenize_conversations(target, conversations, config.max_length)
    if not samples:
        raise DsparkError("no conversation has assistant tokens to learn from: the dataset is empty")
    check_ranks_fit(world, samples, config.shard_tokens, Path(out_dir))  # before the lock: nothing is touched
    with world.exclusive(Path(out_dir), "building a feature cache"):
        return write_feature_cache(target, samples, out_dir, config, source=source, progress=progress, world=world,
                                   extra={"dropped_without_assistant_tokens": len(conversations) - len(samples)},
                                   force=force)


def plan_shards(samples: list[dict], shard_tokens: int) -> list[list[dict]]:
    """Consecutive samples cut into shards of at most `shard_tokens` tokens (a longer sample alone). The plan
    depends on nothing else, so every rank and every rerun sees the same shard i."""
    shards, current, current_tokens = [], [], 0
    for sample in samples:
        if current and current_tokens + len(sample["ids"]) > shard_tokens:
            shards.append(current)
            current, current_tokens = [], 0
        current.append(sample)
        current_tokens += len(sample["ids"])
    if current:
        shards.append(current)
    return shards


def check_ranks_fit(world: World, samples: list[dict], shard_tokens: int, out_dir: Path) -> None:
    """Refuse a job with more ranks than shards (a rank without work would only wait), naming the fix."""
    count = len(plan_shards(samples, shard_tokens))
    if world.size <= count:
        return
    fix = f"run it with --nproc {count}" + (" or fewer" if count > 1 else "")
    smaller = shard_tokens
    while smaller > 1 and len(plan_shards(samples, smaller)) < world.size:
        smaller //= 2
    if len(plan_shards(samples, smaller)) >= world.size:  # (never when there are fewer samples than ranks)
        fix += f", or cut smaller shards (--shard-tokens {smaller})"
    raise DsparkError(f"{world.size} ranks but the feature cache {out_dir} has only {count} shard(s) of at most "
                      f"{shard_tokens} tokens ({len(samples)} conversations): every rank needs a shard; {fix}. "
                      f"Nothing was written")


def write_feature_cache(
    target: TargetModel,
    samples: list[dict],
    out_dir: Path,
    config: CacheConfig,
    *,
    source: dict | None = None,
    progress: bool = True,
    extra: dict | None = None,
    world: World | None = None,
    force: bool = False,
) -> dict:
    """Run the target over token sequences and write the cache; returns the manifest. Each sample is
    {"id", "split", "ids": token ids, "mask": 1 where the token is one the draft learns to predict}.

    A finished cache of the same data is reused once its shards are verified (checksums); missing or damaged
    shards are built again, the rest kept. `force` builds everything anew.

    Several ranks (`world`; every rank passes the same samples) split the shards still to build between them;
    rank 0 alone inspects the directory first and writes the manifest last. The caller holds the directory
    (`build_feature_cache` does)."""
    world = world or current_world()
    config = replace(config, layer_ids=config.layers_for(target.num_layers))
    for layer in config.layer_ids:
        if not 0 <= layer < target.num_layers:
            raise DsparkError(f"layer id {layer} is out of range for {target.spec!r} ({target.num_layers} layers)")
    out_dir = Path(out_dir)
    spec = {
        "format_version": FORMAT_VERSION,
        "target": target.spec,
        "target_revision": target.revision,
        "layer_ids": list(config.layer_ids),
        "hidden_size": target.hidden_size,
        "dtype": config.dtype,
        "tokenizer_hash": tokenizer_hash(target.tokenizer),
        "max_length": config.max_length,
        "samples_hash": hashlib.sha256("".join(s["id"] for s in samples).encode()).hexdigest(),
    }
    check_ranks_fit(world, samples, config.shard_tokens, out_dir)
    shards = plan_shards(samples, config.shard_tokens)
    if force:  # everything anew: the finished cache is set aside (readable until the new one is complete)
        world.on_main(lambda: _set_aside(out_dir))
    state = world.on_main(lambda: _inspect_directory(out_dir, spec, samples, target, config))
    if state["finished"] is not None:
        return state["finished"]  # already built from the same data with the same settings
    candidates = {int(index): entry for index, entry in state["candidates"].items()}
    reusable = _verified_on_every_rank(world, out_dir, shards, candidates)
    todo = [index for index in range(len(shards)) if index not in reusable]
    # shards built again beside reused ones: a repair of damaged shards, or a resumed build
    extra = {**(extra or {}), "rebuilt_shards": len(todo) if state.get("resumed") else 0}
    previous = None
    if not force and (previous_dir(out_dir) / MANIFEST_FILE).exists():  # an update: rank 0 verifies what is copied
        with world.main_first():
            previous = PreviousFeatures(FeatureCache(previous_dir(out_dir), verify=world.is_main))
    mine = world.shard(todo)  # the shards left, dealt round-robin: a resumed job is balanced too
    bar = tqdm(total=sum(_tokens(shards[i]) for i in mine), unit="tok", disable=not (progress and world.is_main),
               desc="caching target features" + (f" (rank 0 of {world.size})" if world.size > 1 else ""))
    built = {index: _build_shard(target, shards[index], index, out_dir, config, spec, world, bar, previous)
             for index in mine}
    bar.close()
    for built_elsewhere in world.gather(built):  # every rank finished its share (a failed rank stopped the job)
        built.update(built_elsewhere)
    entries = [reusable[index] if index in reusable else built[index] for index in range(len(shards))]
    copied = sum(entry.get("copied_samples", 0) for entry in entries)
    manifest = world.on_main(lambda: _write_manifest(out_dir, spec, samples, entries, target, world, source=source,
                                                     extra={**(extra or {}), "copied_samples": copied}))
    world.on_main(lambda: shutil.rmtree(previous_dir(out_dir), ignore_errors=True))  # the update is complete
    return manifest


def _set_aside(out_dir: Path) -> None:
    if (out_dir / MANIFEST_FILE).exists():
        shutil.rmtree(previous_dir(out_dir), ignore_errors=True)
        os.replace(out_dir, previous_dir(out_dir))


def previous_dir(out_dir: Path) -> Path:
    """Where a cache being updated for new data keeps its earlier version until the new one is complete."""
    return out_dir.with_name(out_dir.name + ".previous")


class PreviousFeatures:
    """An earlier version of a cache, by sample: the features of a sample whose tokens (and assistant mask) are
    unchanged are copied from it rather than computed again."""

    def __init__(self, cache: "FeatureCache"):
        self.cache = cache
        self.rows = {sample_id: index for index, sample_id in enumerate(cache.sample_ids())}

    def features(self, sample: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(layers, last hidden, log-sum-exp) of `sample` as the earlier cache holds them, or None."""
        row = self.rows.get(sample["id"])
        if row is None:
            return None
        old = self.cache[row]
        if (old.lse is None or old.input_ids.tolist() != list(sample["ids"])
                or old.loss_mask.tolist() != [bool(m) for m in sample["mask"]]):
            return None
        return old.layers, old.last_hidden, old.lse


def _tokens(shard: list[dict]) -> int:
    return sum(len(s["ids"]) for s in shard)


def _shard_file(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _inspect_directory(out_dir: Path, spec: dict, samples: list[dict], target: TargetModel, config: CacheConfig) -> dict:
    """Rank 0's look at the directory before any rank writes: {"finished": the manifest of the same cache, or
    None; "candidates": {shard index: entry} of the finished shards of an unfinished build}. Refuses a
    directory holding another cache, and a disk without room for the rest of the build."""
    manifest_path = out_dir / MANIFEST_FILE
    repairing = False
    existing = _readable_manifest(manifest_path) if manifest_path.exists() else None
    if manifest_path.exists() and existing is None:
        # nothing it lists can be trusted: every shard is built again (the progress files of a repair, if any,
        # still say which shards are intact)
        manifest_path.unlink()
        repairing = True
    if existing is not None:
        if {k: existing.get(k) for k in spec} == spec:
            shutil.rmtree(previous_dir(out_dir), ignore_errors=True)  # left by an update killed after its manifest
            damaged = _damaged_shards(out_dir, existing)
            if not damaged:
                return {"finished": existing, "candidates": {}}
            # a repair: the manifest goes first (no reader trusts the damaged cache), the intact shards become
            # this build's finished ones, and only the damaged shards are built again
            intact = {index: entry for index, entry in enumerate(existing["shards"]) if entry["file"] not in damaged}
            (out_dir / PROGRESS_DIR).mkdir(exist_ok=True)
            for index, entry in intact.items():
                write_json_atomic(out_dir / PROGRESS_DIR / f"shard-{index:05d}.json",
                                  {"spec": spec, "index": index, "entry": entry})
            (out_dir / MANIFEST_FILE).unlink()
            repairing = True
        elif {k: existing.get(k) for k in spec if k != "samples_hash"} == {k: v for k, v in spec.items() if k != "samples_hash"}:
            # the same cache of other data (a dataset that grew): set it aside, build anew and copy the features
            # of every sample it already holds instead of running the target on it again
            shutil.rmtree(previous_dir(out_dir), ignore_errors=True)
            os.replace(out_dir, previous_dir(out_dir))
        else:
            raise DsparkError(
            f"{out_dir} already holds a feature cache for {existing.get('target')!r} (layers {existing.get('layer_ids')}) "
            f"built from other settings; use another directory or delete it"
        )
    candidates = _unfinished_shards(out_dir)
    if any(recorded_spec != spec for recorded_spec, _ in candidates.values()):
        raise DsparkError(
            f"{out_dir} holds an unfinished cache build with other settings or data; use another directory or delete it"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PROGRESS_DIR).mkdir(exist_ok=True)  # marks the build as started (readers say: interrupted)
    for stale in out_dir.glob(".shard-*.tmp"):  # a build killed mid-write (no rank writes before this returns)
        stale.unlink()
    num_tokens = sum(len(s["ids"]) for s in samples)
    needed = estimate_cache_bytes(num_tokens, target.hidden_size, len(config.layer_ids), config.dtype)
    # the whole build, all ranks together; a resumed build only needs room for what is not written yet
    needed = max(0, needed - sum(f.stat().st_size for f in out_dir.glob("*.safetensors")))
    free = shutil.disk_usage(out_dir).free
    if needed * DISK_MARGIN > free:
        raise DsparkError(
            f"the feature cache needs about {needed / 2**30:.2f} GiB more but {out_dir} has {free / 2**30:.2f} GiB free; "
            f"free space, choose fewer layers / a shorter max length or another directory, or train without a cache: "
            f"`dspark train ... --online-features` computes the features batch by batch"
        )
    return {"finished": None, "candidates": {index: entry for index, (_, entry) in candidates.items()},
            "resumed": repairing or bool(candidates)}


def _readable_manifest(path: Path) -> dict | None:
    """A cache's manifest, or None when it is unreadable or not of its format's shape (a cache of another format
    version is returned as it is: the caller refuses it as another cache)."""
    try:
        manifest = read_json(path, JsonObject, fix=_REBUILD)
        if manifest.get("format_version") == FORMAT_VERSION:
            checked(manifest, CacheManifestFile, where=path, fix=_REBUILD)
    except FileShapeError:
        return None
    return manifest


def _damaged_shards(out_dir: Path, manifest: dict) -> list[str]:
    """The shard files of a finished cache that are missing or whose bytes no longer match their checksum."""
    return [entry["file"] for entry in manifest["shards"]
            if not (out_dir / entry["file"]).is_file() or _sha256(out_dir / entry["file"]) != entry["sha256"]]


def _unfinished_shards(out_dir: Path) -> dict[int, tuple[dict, dict]]:
    """{shard index: (the build settings it was made with, its entry)} from the progress files of an unfinished
    build: one file per finished shard, and the single progress.json of builds before ranks existed."""
    found = {}
    legacy = out_dir / LEGACY_PROGRESS_FILE
    if legacy.exists():
        try:
            recorded = read_json(legacy, JsonObject, fix="")
        except FileShapeError:
            recorded = {}  # its shards are simply built again
        for entry in recorded.get("shards", []) if isinstance(recorded.get("shards"), list) else []:
            try:
                checked(entry, ShardEntry, where=legacy, fix="")
            except FileShapeError:
                continue
            found[int(entry["file"].removeprefix("shard-").removesuffix(".safetensors"))] = (recorded.get("spec"), entry)
    for path in sorted((out_dir / PROGRESS_DIR).glob("shard-*.json")):
        try:
            recorded = read_json(path, ShardProgressFile, fix="")
        except FileShapeError:
            continue  # cannot happen with atomic writes; if it does, that shard is simply built again
        found[recorded["index"]] = (recorded["spec"], recorded["entry"])
    return found


def _verified_on_every_rank(world: World, out_dir: Path, shards: list[list[dict]], candidates: dict[int, dict]) -> dict:
    """{index: entry} of the recorded shards that are reusable: same samples as planned, file present, checksum
    right. The checksums (reading every finished byte) are split between the ranks."""

    def reusable(index: int) -> bool:
        entry, path = candidates[index], out_dir / _shard_file(index)
        return (index < len(shards) and entry["ids"] == [s["id"] for s in shards[index]] and path.exists()
                and _sha256(path) == entry["sha256"])

    checked = [index for index in world.shard(sorted(candidates)) if reusable(index)]
    return {index: candidates[index] for share in world.gather(checked) for index in share}


def _build_shard(target: TargetModel, shard: list[dict], index: int, out_dir: Path, config: CacheConfig, spec: dict,
                 world: World, bar, previous: PreviousFeatures | None = None) -> dict:
    """Compute (or copy from `previous`) and write one shard atomically, then its progress file (this rank's
    alone); returns its entry."""
    name = _shard_file(index)
    copied = {row: found for row, sample in enumerate(shard)
              if previous is not None and (found := previous.features(sample)) is not None}
    tensors = _shard_tensors(target, shard, config, bar, copied)
    tmp = out_dir / f".{name}.tmp"
    try:
        save_tensors(tensors, tmp, metadata={"target_revision": str(target.revision)})
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written shard (a full disk) must not hold the space a rerun needs
        raise
    os.replace(tmp, out_dir / name)
    entry = {
        "file": name,
        "ids": [s["id"] for s in shard],
        "splits": [s["split"] for s in shard],
        "tokens": _tokens(shard),
        "sha256": _sha256(out_dir / name),
        "rank": world.rank,  # which rank of how many built it (reused shards keep the rank of their build)
        "ranks": world.size,
        "copied_samples": len(copied),
    }
    write_json_atomic(out_dir / PROGRESS_DIR / f"shard-{index:05d}.json", {"spec": spec, "index": index, "entry": entry})
    return entry


def _write_manifest(out_dir: Path, spec: dict, samples: list[dict], entries: list[dict], target: TargetModel,
                    world: World, *, source: dict | None, extra: dict | None) -> dict:
    """Rank 0, once every shard is written: the manifest (last, atomically), then the progress files go, and
    so do shard files of an earlier plan that the manifest does not list."""
    manifest = {
        **spec,
        "status": "complete",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_samples": len(samples),
        "num_tokens": sum(len(s["ids"]) for s in samples),
        "assistant_tokens": sum(sum(s["mask"]) for s in samples),
        "target_dtype": str(target.dtype).removeprefix("torch."),  # the precision the features were computed in
        **(extra or {}),
        "bytes": sum((out_dir / e["file"]).stat().st_size for e in entries),
        "ranks": world.size,
        "source": source or {},
        "shards": entries,
    }
    write_json_atomic(out_dir / MANIFEST_FILE, manifest)
    shutil.rmtree(out_dir / PROGRESS_DIR, ignore_errors=True)
    (out_dir / LEGACY_PROGRESS_FILE).unlink(missing_ok=True)
    listed = {e["file"] for e in entries}
    for orphan in out_dir.glob("shard-*.safetensors"):
        if orphan.name not in listed:
            orphan.unlink()
    return manifest


@torch.inference_mode()
def _shard_tensors(target: TargetModel, shard: list[dict], config: CacheConfig, bar,
                   copied: dict[int, tuple] | None = None) -> dict[str, torch.Tensor]:
    """The shard's tensors; the samples in `copied` (row -> features from an earlier cache) are not computed."""
    dtype = _DTYPES[config.dtype]
    copied = copied or {}
    rows = dict(copied)
    todo = [row for row in range(len(shard)) if row not in copied]
    for row in copied:
        bar.update(len(shard[row]["ids"]))
    start = 0
    while start < len(todo):
        # Grow the batch while padded tokens stay within the budget.
        end, longest = start, 0
        while end < len(todo):
            longest_next = max(longest, len(shard[todo[end]]["ids"]))
            if end > start and longest_next * (end - start + 1) > config.batch_tokens:
                break
            longest, end = longest_next, end + 1
        batch = [shard[row] for row in todo[start:end]]
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        attention = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, sample in enumerate(batch):
            ids[row, : len(sample["ids"])] = torch.tensor(sample["ids"])
            attention[row, : len(sample["ids"])] = 1
        features = target.forward_features(ids, attention_mask=attention, layer_ids=config.layer_ids, with_logits=False)
        fused = torch.cat(features.layers, dim=-1)
        for place, (row, sample) in enumerate(zip(todo[start:end], batch)):
            n = len(sample["ids"])
            stored = features.last_hidden[place, :n].to(dtype)
            # The normalizer of the target's distribution, from the hidden state as stored: with it, training
            # needs the LM head's rows of the draft vocabulary only, not all of them.
            lse = torch.cat([target.lm_logsumexp(chunk) for chunk in stored.split(1024)]).cpu()
            rows[row] = (fused[place, :n].to("cpu", dtype), stored.to("cpu"), lse)
            bar.update(n)
        start = end
    layers_out, hidden_out, lse_out = zip(*(rows[row] for row in range(len(shard))))
    lengths = torch.tensor([len(s["ids"]) for s in shard], dtype=torch.long)
    return {
        "input_ids": torch.tensor([t for s in shard for t in s["ids"]], dtype=torch.int32),
        "loss_mask": torch.tensor([m for s in shard for m in s["mask"]], dtype=torch.uint8),
        "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        "layers": torch.cat(layers_out).contiguous(),
        "last_hidden": torch.cat(hidden_out).contiguous(),
        "lse": torch.cat(lse_out).contiguous(),
    }


@dataclass
class CacheBatch:
    """Right-padded samples as tensors: what a training or validation step consumes."""

    input_ids: torch.Tensor  # [B, T] long
    loss_mask: torch.Tensor  # [B, T] bool
    layers: torch.Tensor  # [B, T, m*d] (the requested layers, concatenated)
    last_hidden: torch.Tensor  # [B, T, d]
    lengths: torch.Tensor  # [B] long
    #: [B, T] float32 log-sum-exp of the target's logits (None for caches built before it was stored)
    lse: torch.Tensor | None = None


@dataclass
class CachedSample:
    id: str
    split: str
    input_ids: torch.Tensor  # [T] long
    loss_mask: torch.Tensor  # [T] bool, True on assistant tokens
    layers: torch.Tensor  # [T, m*d]
    last_hidden: torch.Tensor  # [T, d]
    lse: torch.Tensor | None = None  # [T] float32


class FeatureCache:
    """Read a feature cache, memory-mapped. Pass what you expect (target revision, layer ids, tokenizer hash):
    a cache built for anything else is refused with a message naming both sides."""

    def __init__(
        self,
        path: str | Path,
        *,
        target_revision: str | None = None,
        layer_ids: tuple[int, ...] | list[int] | None = None,
        tokenizer: str | None = None,
        split: str | None = None,
        verify: bool = True,
    ):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_FILE
        if not manifest_path.is_file():
            partial = (self.path / PROGRESS_DIR).is_dir() or (self.path / LEGACY_PROGRESS_FILE).exists()
            raise DsparkError(
                f"{self.path} is not a finished feature cache ({'the build was interrupted; rerun it to resume' if partial else 'no manifest.json'})"
            )
        self.manifest = read_json(manifest_path, JsonObject, fix=_REBUILD)
        m = self.manifest
        if m.get("format_version") != FORMAT_VERSION:
            raise CacheMismatchError(f"{self.path} has cache format {m.get('format_version')}, expected {FORMAT_VERSION}; rebuild it")
        checked(m, CacheManifestFile, where=manifest_path, fix=_REBUILD)
        if target_revision is not None and m["target_revision"] != target_revision:
            raise CacheMismatchError(
                f"feature cache {self.path} was built for target {m['target']!r} (revision {str(m['target_revision'])[:12]}), "
                f"not for revision {target_revision[:12]}; build a cache for this target with `dspark data cache`"
            )
        if layer_ids is not None and list(layer_ids) != m["layer_ids"]:
            raise CacheMismatchError(
                f"feature cache {self.path} holds layers {m['layer_ids']}, but {list(layer_ids)} were requested; "
                f"rebuild the cache with these layers or train with --layer-ids {','.join(map(str, m['layer_ids']))}"
            )
        if tokenizer is not None and m["tokenizer_hash"] != tokenizer:
            raise CacheMismatchError(f"feature cache {self.path} was made with a different tokenizer than the target's; rebuild it")
        self.layer_ids = tuple(m["layer_ids"])
        self.hidden_size = m["hidden_size"]
        self._handles: dict[str, object] = {}
        self._index: list[tuple[str, int, str, str]] = []  # (file, row in shard, id, split)
        for entry in m["shards"]:
            file = self.path / entry["file"]
            if not file.is_file():
                raise CorruptCacheError(f"shard {file} is missing; rebuild the cache")
            if verify and _sha256(file) != entry["sha256"]:
                raise CorruptCacheError(f"shard {file} is corrupt (checksum mismatch); rebuild the cache")
            for row, (sample_id, sample_split) in enumerate(zip(entry["ids"], entry["splits"])):
                if split is None or sample_split == split:
                    self._index.append((entry["file"], row, sample_id, sample_split))

    def __len__(self) -> int:
        return len(self._index)

    def sample_ids(self) -> list[str]:
        """The ids of the samples, in index order."""
        return [sample_id for _, _, sample_id, _ in self._index]

    def _open(self, file: str):
        if file not in self._handles:
            try:
                handle = safe_open(str(self.path / file), framework="pt")
                offsets = handle.get_tensor("offsets")
            except Exception as exc:
                raise CorruptCacheError(f"shard {self.path / file} cannot be read ({exc}); rebuild the cache") from exc
            self._handles[file] = (handle, offsets)
        return self._handles[file]

    def __getitem__(self, index: int) -> CachedSample:
        file, row, sample_id, split = self._index[index]
        handle, offsets = self._open(file)
        start, end = int(offsets[row]), int(offsets[row + 1])
        return CachedSample(
            id=sample_id,
            split=split,
            input_ids=handle.get_slice("input_ids")[start:end].long(),
            loss_mask=handle.get_slice("loss_mask")[start:end].bool(),
            layers=handle.get_slice("layers")[start:end],
            last_hidden=handle.get_slice("last_hidden")[start:end],
            lse=handle.get_slice("lse")[start:end] if "lse" in handle.keys() else None,
        )

    def batch(self, indices: list[int], *, max_length: int, layer_ids: tuple[int, ...], device, dtype) -> CacheBatch:
        """Samples `indices`, cut to `max_length`, with the features of `layer_ids` (a subset of the cached
        layers, in that order), padded on the right."""
        samples = [self[i] for i in indices]
        length = min(max_length, max(s.input_ids.numel() for s in samples))
        d = self.hidden_size
        columns = torch.cat([torch.arange(self.layer_ids.index(i) * d, (self.layer_ids.index(i) + 1) * d)
                             for i in layer_ids])
        ids = torch.zeros(len(samples), length, dtype=torch.long)
        mask = torch.zeros(len(samples), length, dtype=torch.bool)
        layers = torch.zeros(len(samples), length, columns.numel(), dtype=dtype)
        hidden = torch.zeros(len(samples), length, samples[0].last_hidden.shape[-1], dtype=dtype)
        lengths = torch.zeros(len(samples), dtype=torch.long)
        with_lse = all(s.lse is not None for s in samples)
        lse = torch.zeros(len(samples), length, dtype=torch.float32)
        for row, s in enumerate(samples):
            n = min(length, s.input_ids.numel())
            ids[row, :n], mask[row, :n], lengths[row] = s.input_ids[:n], s.loss_mask[:n], n
            layers[row, :n], hidden[row, :n] = s.layers[:n, columns].to(dtype), s.last_hidden[:n].to(dtype)
            if with_lse:
                lse[row, :n] = s.lse[:n]
        return CacheBatch(ids.to(device), mask.to(device), layers.to(device), hidden.to(device), lengths.to(device),
                          lse.to(device) if with_lse else None)
