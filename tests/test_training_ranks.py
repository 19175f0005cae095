"""Training under torchrun (CPU, gloo): two ranks train what one rank trains, FSDP2 what DDP trains, a run resumes
on another number of ranks, and a rank killed with SIGKILL ends the job with an error naming it.

Tolerance: the ranks sum the same gradients in another order, so losses agree to 1e-5 (relative) and weights to
1e-5 (absolute) after the run, in float32 (measured: 2e-8 after 12 steps on this data)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, run_cli
from dspark_core.data import layout
from dspark_core.data.feature_cache import CacheConfig, build_feature_cache
from dspark_core.data.prompts import PromptRecord
from dspark_core.data.regenerate import RegenerationConfig, read_responses, regenerate_responses
from dspark_core.paths import settled_directory

DATASET = "ranks"
STEPS = 60
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def ranks_cache(tiny_target, tmp_path_factory):
    """24 greedy conversations of the tiny target, cached (float32, layers 0-2) where `dspark train` finds them."""
    root = tmp_path_factory.mktemp("ranks")
    pairs = [(PromptRecord.create([("user", f"Question {i}: tell me about topic {7 * i}.")], "t"),
              "validation" if i % 6 == 0 else "train") for i in range(24)]
    regenerate_responses(tiny_target, pairs, root / "responses", RegenerationConfig(max_new_tokens=40, temperature=0),
                         progress=False)
    cache = layout.cache_dir(DATASET, TINY, (0, 1, 2), "float32")
    build_feature_cache(tiny_target, read_responses(root / "responses")[1], cache,
                        CacheConfig(layer_ids=(0, 1, 2), dtype="float32"), progress=False)
    return cache


def _train(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dspark_cli", "train", "--target", TINY, "--dataset", DATASET, "--layer-ids", "0,1,2",
            "--cache-dtype", "float32", "--steps", str(STEPS), "--checkpoint-every", "2", "--log-every", "2",
            "--draft-vocab", "256", "--head-rank", "16", "--anchors", "8", "--batch-size", "4", "--out", str(out), *extra]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _losses(run: Path) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "draft" / "model.safetensors"))


def _assert_same_training(run: Path, reference: Path) -> None:
    ours, theirs = _losses(run), _losses(reference)
    assert list(ours) == list(range(2, STEPS + 1, 2)) == list(theirs)
    assert all(abs(ours[s] - theirs[s]) <= LOSS_RTOL * abs(theirs[s]) for s in ours), (ours, theirs)
    a, b = _weights(run), _weights(reference)
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= WEIGHT_ATOL, f"weights differ by up to {worst}"


@pytest.fixture(scope="module")
def one_rank_run(ranks_cache, tmp_path_factory):
    """The reference: one process, no torchrun."""
    out = tmp_path_factory.mktemp("one-rank") / "run"
    subprocess.run(_train(out), env=_env(), check=True, capture_output=True)
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_train_what_one_rank_trains(one_rank_run, tmp_path, strategy):
    """Same global batch (4 sequences): 2 ranks x 2 micro-batches of 1 sequence, gradients accumulated and summed
    over ranks, give the one-process loss curve and weights, with DDP and with FSDP2 alike."""
    out = tmp_path / "run"
    done = subprocess.run(_train(out, "--nproc", "2", "--parallel", strategy, "--micro-batch", "1"), env=_env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "state" / "state.json").read_text())["world_size"] == 2
    assert done.stdout.count("trained dspark") == 1  # rank 0 alone reports
    _assert_same_training(out, one_rank_run)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def _wait_for_state(run: Path, step: int, process: subprocess.Popen) -> None:
    state = settled_directory(run / "state") / "state.json"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        try:
            if json.loads(state.read_text())["step"] >= step:
                return
        except (OSError, ValueError, KeyError):
            pass  # not written yet, or being replaced right now
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach step {step} (exit code {process.poll()})")


def _saved_step(run: Path) -> int:
    return json.loads((settled_directory(run / "state") / "state.json").read_text())["step"]


def test_a_run_resumes_across_world_sizes_and_a_killed_rank_ends_the_job(one_rank_run, tmp_path):
    """1 rank (killed) -> 2 ranks (rank 1 SIGKILLed: the job stops with an error naming it) -> 1 rank to the end:
    the same weights as the uninterrupted one-rank run."""
    out = tmp_path / "run"
    alone = subprocess.Popen(_train(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_state(out, 10, alone)
    alone.send_signal(signal.SIGKILL)
    alone.wait()
    first = _saved_step(out)
    assert 10 <= first < STEPS

    pair = subprocess.Popen(_train(out, "--nproc", "2"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_state(out, first + 10, pair)
    rank_one = _rank_pid(pair.pid, 1)
    assert rank_one is not None, "rank 1 of the job was not found"
    os.kill(rank_one, signal.SIGKILL)
    _, stderr = pair.communicate(timeout=120)  # the launcher stops rank 0 too: no hang
    assert pair.returncode == 2
    assert "rank 1 of 2 failed: it was killed by SIGKILL" in stderr and "run the same command again" in stderr
    second = _saved_step(out)
    assert first + 10 <= second < STEPS
    assert json.loads((settled_directory(out / "state") / "state.json").read_text())["world_size"] == 2

    subprocess.run(_train(out), env=_env(), check=True, capture_output=True)
    _assert_same_training(out, one_rank_run)


def test_bad_rank_settings_are_one_line_errors_before_any_launch(ranks_cache, tmp_path, capsys):
    code, _, err = run_cli(["train", "--target", TINY, "--dataset", DATASET, "--nproc", "0", "--out", str(tmp_path / "a")],
                           capsys)
    assert code == 2 and "--nproc 0" in err and "at least one process" in err
    code, _, err = run_cli(["train", "--target", TINY, "--dataset", DATASET, "--nproc", "2", "--batch-size", "3",
                            "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "a batch of 3 sequences does not split evenly over 2 ranks" in err and "--batch-size 4" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
