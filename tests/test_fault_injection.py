"""kill -9 in the middle of long jobs, in real subprocesses, then run again: the artefacts equal those of an
uninterrupted run, and a half-written artefact is never read as complete. Regeneration and cache builds are
killed once a randomly drawn part of their output exists (a new draw every run); export and evaluation at their most delicate points (an export
while it writes, and between moving the previous export aside and the new one in; an evaluation inside the
metrics database's transaction, after the old rows of its measurement were deleted). (Training has its own
SIGKILL test in test_training.py.)"""

from __future__ import annotations

import json
import random
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
elif stage == "export":  # export checkpoint argv[3]; block where argv[4] says (write | swap) for the kill
    import os, time
    import safetensors.torch
    import dspark_core.export.formats as formats
    marker = out.with_name("blocked-here")
    if sys.argv[4] == "write":  # the export's weights are written through safetensors.torch.save_file
        write = safetensors.torch.save_file
        safetensors.torch.save_file = lambda *a, **k: (write(*a, **k), marker.touch(), time.sleep(600))
    elif sys.argv[4] == "swap":
        replace = os.replace
        os.replace = lambda src, dst: (Path(dst) == out and (marker.touch(), time.sleep(600)), replace(src, dst))
    formats.export_draft(Path(sys.argv[3]), out, "hf")
elif stage == "eval":  # evaluate draft argv[3]; record into database `out`; with argv[4] == "commit", block
    import time                                 # inside the transaction, after the measurement's old rows went
    from datetime import datetime, timezone
    import dspark_core.store.acceptance as acceptance
    from dspark_core.recipes.evaluation import EvalConfig, evaluate
    from dspark_core.evaluation.speculative import eval_prompts
    from dspark_core.store import MetricsStore
    if sys.argv[4] == "commit":
        marker, row = out.with_name("blocked-here"), acceptance.astuple
        acceptance.astuple = lambda r: (marker.touch(), time.sleep(600), row(r))[-1]
    prompts = [PromptRecord.create([("user", f"Count to {i} in words.")], "t") for i in range(3)]
    report = evaluate(target, Path(sys.argv[3]), eval_prompts(target, prompts), EvalConfig(max_new_tokens=8))
    recorded_at = datetime(2026, 1, 1, tzinfo=timezone.utc)  # one measurement key for every run
    MetricsStore(out).record(report.acceptance_rows(base_model="tiny", recorded_at=recorded_at))
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


#: where the kills land: drawn anew every run (the draw is in the test's failure message)
KILL_POINTS = random.Random()


def test_kill_9_during_regeneration_then_rerun_writes_what_an_uninterrupted_run_does(straight, tmp_path):
    out = tmp_path / "responses"
    lines = lambda: len((out / "responses.jsonl").read_text().splitlines()) if (out / "responses.jsonl").exists() else 0  # noqa: E731
    point = KILL_POINTS.randint(1, 30)  # answers written before the kill (of 40)
    _kill_when(["regenerate", str(out)], lambda: lines() >= point)
    assert point <= lines() < 40, f"killed after {point} answers"
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    from dspark_core.data.regenerate import read_responses

    with pytest.raises(DsparkError, match="did not finish"):
        read_responses(out)  # never read as complete
    _run("regenerate", str(out))
    assert _answers(out) == _answers(straight / "responses"), f"killed after {point} answers"  # sampled, T = 1


def test_kill_9_during_a_cache_build_then_rerun_writes_the_same_shards(straight, tmp_path):
    out = tmp_path / "cache"
    shards = len(json.loads((straight / "cache" / "manifest.json").read_text())["shards"])
    point = KILL_POINTS.randint(1, max(1, shards // 2))  # finished shards before the kill
    _kill_when(["cache", str(out), str(straight / "responses")], lambda: len(list(out.glob("shard-*"))) >= point)
    from dspark_core.data.feature_cache import FeatureCache

    with pytest.raises(DsparkError):
        FeatureCache(out)  # never read as complete
    _run("cache", str(out), str(straight / "responses"))
    ours = json.loads((out / "manifest.json").read_text())["shards"]
    theirs = json.loads((straight / "cache" / "manifest.json").read_text())["shards"]
    assert len(ours) > 2 and [s["sha256"] for s in ours] == [s["sha256"] for s in theirs], f"killed after {point} shards"


@pytest.fixture(scope="module")
def drafts(tmp_path_factory, tiny_target) -> Path:
    """Two different saved drafts: `a` (exported by the jobs under test) and `b` (an earlier export's)."""
    from dspark_core.drafters.checkpoint import save_draft
    from test_drafters import _model

    root = tmp_path_factory.mktemp("drafts")
    save_draft(_model(tiny_target), root / "a", target=tiny_target)
    save_draft(_model(tiny_target, head="gated"), root / "b", target=tiny_target)
    return root


@pytest.mark.parametrize("point", ["write", "swap"])
def test_kill_9_during_an_export_keeps_the_earlier_export_readable(drafts, tmp_path, point):
    from dspark_core.drafters.checkpoint import load_draft, weights_sha256
    from dspark_core.export import export_draft

    export_draft(drafts / "a", tmp_path / "reference", "hf")
    out = tmp_path / "export"
    export_draft(drafts / "b", out, "hf")  # the earlier export, which the killed one was replacing
    earlier = weights_sha256(out)
    _kill_when(["export", str(out), str(drafts / "a"), point], lambda: (tmp_path / "blocked-here").exists())
    assert weights_sha256(out) == earlier  # still the complete earlier export, never a half-written one
    assert load_draft(out)[1]["module"]["head"] == "gated"
    _run("export", str(out), str(drafts / "a"), "none")
    assert weights_sha256(out) == weights_sha256(tmp_path / "reference")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == [".export.lock"]


def test_kill_9_inside_the_metrics_transaction_keeps_the_measurement_whole(drafts, tmp_path):
    from dspark_core.store import MetricsStore

    database = tmp_path / "metrics.duckdb"
    _run("eval", str(database), str(drafts / "a"), "none")
    count = "SELECT measurement_key, count(*), sum(CASE WHEN metric = 'tau' THEN value END) FROM acceptance_metrics GROUP BY 1"
    before = MetricsStore(database).query(count)[1]
    _kill_when(["eval", str(database), str(drafts / "a"), "commit"], lambda: (tmp_path / "blocked-here").exists())
    assert MetricsStore(database).query(count)[1] == before  # the deletion was rolled back with the transaction
    _run("eval", str(database), str(drafts / "a"), "none")
    assert MetricsStore(database).query(count)[1] == before  # replaced, not duplicated; greedy τ is the same
