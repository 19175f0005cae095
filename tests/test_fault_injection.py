"""kill -9 in the middle of long jobs, in real subprocesses, then run again: the artefacts equal those of an
uninterrupted run, and a half-written artefact is never read as complete. (Training has its own SIGKILL test in
test_training.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dspark_core.errors import DsparkError

DRIVER = r"""
import sys
from pathlib import Path
from dspark_core.data.feature_cache import CacheConfig, build_feature_cache
from dspark_core.data.prompts import PromptRecord
from dspark_core.data.regenerate import RegenerationConfig, read_responses, regenerate_responses
from dspark_core.models import load_target

stage, out = sys.argv[1], Path(sys.argv[2])
target = load_target("tiny:smollm2-135m", device="cpu", dtype="float32")
if stage == "regenerate":
    prompts = [(PromptRecord.create([("user", f"Tell me a fact about topic number {i}.")], "t"), "train")
               for i in range(40)]
    config = RegenerationConfig(max_new_tokens=12, batch_size=2, temperature=1.0, top_k=20)
    regenerate_responses(target, prompts, out, config, progress=False)
else:
    _, conversations = read_responses(Path(sys.argv[3]))
    config = CacheConfig(layer_ids=(0, 1), dtype="float32", shard_tokens=200, batch_tokens=256)
    build_feature_cache(target, conversations, out, config, progress=False)
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, *args], check=True, capture_output=True, text=True)


def _kill_when(args: list[str], ready, timeout: float = 180.0) -> None:
    """Start the job, SIGKILL it as soon as `ready()` holds (it must hold before the job ends)."""
    process = subprocess.Popen([sys.executable, "-c", DRIVER, *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and process.poll() is None and not ready():
            time.sleep(0.01)
        assert process.poll() is None, "the job ended before it could be killed mid-way"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()


def _answers(directory: Path) -> dict[str, list]:
    lines = (directory / "responses.jsonl").read_text().splitlines()
    return {json.loads(line)["id"]: json.loads(line)["response_ids"] for line in lines}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted regeneration and cache build."""
    root = tmp_path_factory.mktemp("straight")
    _run("regenerate", str(root / "responses"))
    _run("cache", str(root / "cache"), str(root / "responses"))
    return root


def test_kill_9_during_regeneration_then_rerun_writes_what_an_uninterrupted_run_does(straight, tmp_path):
    out = tmp_path / "responses"
    lines = lambda: len((out / "responses.jsonl").read_text().splitlines()) if (out / "responses.jsonl").exists() else 0  # noqa: E731
    _kill_when(["regenerate", str(out)], lambda: lines() >= 6)
    assert 6 <= lines() < 40 and json.loads((out / "manifest.json").read_text())["status"] == "running"
    from dspark_core.data.regenerate import read_responses

    with pytest.raises(DsparkError, match="did not finish"):
        read_responses(out)  # never read as complete
    _run("regenerate", str(out))
    assert _answers(out) == _answers(straight / "responses")  # sampled, at temperature 1


def test_kill_9_during_a_cache_build_then_rerun_writes_the_same_shards(straight, tmp_path):
    out = tmp_path / "cache"
    _kill_when(["cache", str(out), str(straight / "responses")], lambda: len(list(out.glob("shard-*"))) >= 2)
    from dspark_core.data.feature_cache import FeatureCache

    with pytest.raises(DsparkError):
        FeatureCache(out)  # never read as complete
    _run("cache", str(out), str(straight / "responses"))
    ours = json.loads((out / "manifest.json").read_text())["shards"]
    theirs = json.loads((straight / "cache" / "manifest.json").read_text())["shards"]
    assert len(ours) > 2 and [s["sha256"] for s in ours] == [s["sha256"] for s in theirs]
