"""The feature cache built by several ranks (torchrun, gloo on CPU): the same cache as one process builds, resumed
by any number of ranks after a failure, and a job with more ranks than shards refused before any work.

Each torchrun launch starts Python processes that import torch and transformers (seconds each on a small CPU),
so the tests launch as few as they can: one 2-rank build through plain `torchrun -m dspark_cli`, one that fails
on a rank (a driver script), one refused through `dspark data cache --nproc 2`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dspark_core.data import feature_cache as cache_module
from dspark_core.data import layout
from dspark_core.data.feature_cache import PROGRESS_DIR, CacheConfig, FeatureCache, build_feature_cache
from dspark_core.data.prompts import PromptRecord
from dspark_core.data.regenerate import RegenerationConfig, read_responses, regenerate_responses
from dspark_core.distributed import World
from dspark_core.errors import DsparkError

TINY = "tiny:smollm2-135m"
LAYERS = (0, 2)
#: small shards, so that a dozen short conversations make several of them
SHARD_TOKENS = 100
#: features computed in float64 and stored in float32: only a rank's thread count differs from the reference
#: (torchrun runs each rank on one thread), which moves the float64 sums by far less than float32's resolution
FLOAT_TOLERANCE = dict(rtol=1e-6, atol=1e-6)
CLI_ARGS = ["data", "cache", "--target", TINY, "--layer-ids", ",".join(map(str, LAYERS)), "--dtype", "float32",
            "--target-dtype", "float64", "--shard-tokens", str(SHARD_TOKENS)]


def _config() -> CacheConfig:
    return CacheConfig(layer_ids=LAYERS, dtype="float32", shard_tokens=SHARD_TOKENS)


def _env() -> dict:
    """The test session's $DSPARK_HOME (its imported tiny model, its datasets), offline."""
    return {**os.environ, "DSPARK_HOME": os.environ["DSPARK_HOME"], "HF_HUB_OFFLINE": "1"}


def _torchrun(nproc: int, *command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N <command>`, as a user types it."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           *command], env=_env(), capture_output=True, text=True, timeout=timeout)


def _dataset(name: str, responses: Path) -> str:
    """A dataset under $DSPARK_HOME holding a copy of `responses` (each test builds into its own cache folder)."""
    shutil.copytree(responses, layout.responses_dir(name, TINY))
    return name


@pytest.fixture(scope="module")
def responses(tiny_target, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache-ranks") / "responses"
    prompts = [(PromptRecord.create([("user", f"Tell me about topic {i}.")], "t"),
                "validation" if i % 4 == 0 else "train") for i in range(12)]
    regenerate_responses(tiny_target, prompts, out, RegenerationConfig(max_new_tokens=12, batch_size=4, temperature=1.0,
                                                                       top_k=20), progress=False)
    return out


@pytest.fixture(scope="module")
def reference(tiny_target, responses, tmp_path_factory) -> Path:
    """The cache one process builds."""
    out = tmp_path_factory.mktemp("cache-ranks") / "one-rank"
    manifest = build_feature_cache(tiny_target, read_responses(responses)[1], out, _config(), progress=False)
    assert len(manifest["shards"]) >= 4, "the data must make several shards per rank"
    return out


def _manifest(cache: Path) -> dict:
    return json.loads((cache / "manifest.json").read_text())


def _assert_same_cache(ours: Path, reference: Path) -> None:
    """The same samples, ids, splits and tokens, shard by shard; token data exactly, features within tolerance."""
    mine, theirs = _manifest(ours), _manifest(reference)
    for key in ("num_samples", "num_tokens", "assistant_tokens", "samples_hash", "layer_ids", "target_revision"):
        assert mine[key] == theirs[key], key
    assert [(e["file"], e["ids"], e["splits"], e["tokens"]) for e in mine["shards"]] == \
        [(e["file"], e["ids"], e["splits"], e["tokens"]) for e in theirs["shards"]]
    for entry in theirs["shards"]:
        a, b = load_file(str(ours / entry["file"])), load_file(str(reference / entry["file"]))
        for name in ("input_ids", "loss_mask", "offsets"):
            assert torch.equal(a[name], b[name]), (entry["file"], name)
        for name in ("layers", "last_hidden", "lse"):
            assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, (entry["file"], name)
            torch.testing.assert_close(a[name], b[name], **FLOAT_TOLERANCE, msg=f"{entry['file']} {name}")
    assert len(FeatureCache(ours)) == theirs["num_samples"]  # readable, checksums right
    assert not (ours / PROGRESS_DIR).exists()


def test_two_ranks_under_torchrun_build_the_cache_one_rank_builds(responses, reference):
    dataset = _dataset("ranks-two", responses)
    run = _torchrun(2, "-m", "dspark_cli", *CLI_ARGS, "--dataset", dataset)
    assert run.returncode == 0, run.stderr[-3000:]
    cache = layout.cache_dir(dataset, TINY, LAYERS, "float32")
    _assert_same_cache(cache, reference)
    manifest = _manifest(cache)
    # the work was really split: each rank built shards (every other one), not rank 0 all of them
    assert manifest["ranks"] == 2
    assert [e["rank"] for e in manifest["shards"]] == [i % 2 for i in range(len(manifest["shards"]))]
    assert run.stdout.count("feature cache") == 1 and run.stdout.count("assistant tokens") == 1  # rank 0 alone


DRIVER = textwrap.dedent("""
    # Build the cache in argv[1] from the responses in argv[2]; rank 1 fails while computing its second shard.
    import sys
    from pathlib import Path
    from dspark_core.data import feature_cache
    from dspark_core.data.feature_cache import CacheConfig, build_feature_cache
    from dspark_core.data.regenerate import read_responses
    from dspark_core.distributed import process_group
    from dspark_core.models import load_target

    with process_group() as world:
        with world.main_first():
            target = load_target("tiny:smollm2-135m", device="cpu", dtype="float64")
        if world.rank == 1:
            compute, calls = feature_cache._shard_tensors, []
            def fail_on_second(*args):
                calls.append(1)
                if len(calls) == 2:
                    raise RuntimeError("simulated failure on rank 1")
                return compute(*args)
            feature_cache._shard_tensors = fail_on_second
        config = CacheConfig(layer_ids=(0, 2), dtype="float32", shard_tokens=int(sys.argv[3]))
        build_feature_cache(target, read_responses(Path(sys.argv[2]))[1], Path(sys.argv[1]), config, progress=False)
""")


def test_a_two_rank_build_that_failed_resumes_with_one_rank(tiny_target, responses, reference, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run = _torchrun(2, str(driver), str(out), str(responses), str(SHARD_TOKENS))
    assert run.returncode != 0 and "simulated failure on rank 1" in run.stderr, run.stderr[-3000:]
    with pytest.raises(DsparkError, match="interrupted; rerun it to resume"):
        FeatureCache(out)  # never read as complete
    progress = {p.name: json.loads(p.read_text()) for p in (out / PROGRESS_DIR).glob("shard-*.json")}
    # rank 1 finished its first shard (shard 1) before it failed; each progress file is its builder's own
    assert progress["shard-00001.json"]["entry"]["rank"] == 1
    assert all(record["entry"]["rank"] == record["index"] % 2 for record in progress.values())
    assert not (out / "manifest.json").exists()

    # one finished shard goes missing as well: the resumed build redoes it and reuses the others
    (out / "shard-00001.safetensors").unlink()
    built = []
    compute = cache_module._shard_tensors
    monkeypatch.setattr(cache_module, "_shard_tensors", lambda *a: (built.append(1), compute(*a))[1])
    shards = len(_manifest(reference)["shards"])
    build_feature_cache(tiny_target, read_responses(responses)[1], out, _config(), progress=False)
    assert len(built) == shards - (len(progress) - 1)
    _assert_same_cache(out, reference)


def test_more_ranks_than_shards_is_refused_in_one_line_before_any_work(responses):
    dataset = _dataset("ranks-too-many", responses)
    run = subprocess.run([sys.executable, "-m", "dspark_cli", *CLI_ARGS[:-1], "100000", "--dataset", dataset,
                          "--nproc", "2"], env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rank 0 of 2 failed: 2 ranks but the feature cache"), last
    assert "only 1 shard(s) of at most 100000 tokens" in last and "--nproc 1" in last and "--shard-tokens" in last
    assert not layout.cache_dir(dataset, TINY, LAYERS, "float32").exists()


def test_more_ranks_than_shards_leaves_a_finished_cache_untouched(tiny_target, responses, reference, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(reference, out)
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()}
    shards = len(_manifest(reference)["shards"])
    with pytest.raises(DsparkError, match=rf"^{shards + 1} ranks but .* has only {shards} shard\(s\).*"
                                          rf"--nproc {shards} or fewer, or cut smaller shards \(--shard-tokens \d+\)"):
        build_feature_cache(tiny_target, read_responses(responses)[1], out, _config(), progress=False,
                            world=World(rank=0, size=shards + 1))
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".cache.*"))  # not even the lock was taken
