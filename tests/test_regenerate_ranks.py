"""Regeneration split across ranks: `dspark data regenerate --nproc 2` (torchrun's launcher, gloo on the CPU) as a
subprocess writes what one process writes, resumes from part files cut short, and fails at once on a held lock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, run_cli
from dspark_core.data import layout
from dspark_core.data.regenerate import part_path
from dspark_core.paths import exclusive_writer

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"greedy": ["--temperature", "0"], "sampled": ["--temperature", "1", "--top-k", "20"]}
BATCH = 2


def _regenerate(dataset: str, mode: str) -> list[str]:
    return ["data", "regenerate", "--target", TINY, "--dataset", dataset, "--max-new-tokens", "8",
            "--batch-size", str(BATCH), "--target-dtype", "float64", *SETTINGS[mode]]


def _two_ranks(arguments: list[str]) -> subprocess.CompletedProcess:
    """The command line as 2 ranks, in a subprocess with this session's $DSPARK_HOME."""
    return subprocess.run([sys.executable, "-m", "dspark_cli", *arguments, "--nproc", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _dataset(name: str, tmp_path: Path, capsys) -> str:
    """A dataset of 9 prompts (one multi-turn with a system prompt) under this session's $DSPARK_HOME."""
    source = tmp_path / name / "prompts.jsonl"  # the same file name everywhere: the answers record it
    source.parent.mkdir()
    lines = [{"prompt": f"Tell me about topic {i}."} for i in range(8)]
    lines.append({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "First?"},
                               {"role": "user", "content": "And then?"}]})
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, _, err = run_cli(["data", "prompts", "--source", str(source), "--dataset", name], capsys)
    assert code == 0, err
    return name


def _responses(dataset: str) -> Path:
    return layout.responses_dir(dataset, TINY)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> dict[str, list[str]]:
    """responses.jsonl's lines written by one process, per setting."""
    capsys = _NoCapture()
    lines = {}
    for mode in SETTINGS:
        dataset = _dataset(f"ranks-{mode}-one", tmp_path_factory.mktemp(mode), capsys)
        code, _, err = run_cli(_regenerate(dataset, mode), capsys)
        assert code == 0, err
        lines[mode] = (_responses(dataset) / "responses.jsonl").read_text().splitlines()
    return lines


class _NoCapture:
    """run_cli's capsys where the output is not looked at (a module fixture has no capsys)."""

    def readouterr(self):
        return type("Captured", (), {"out": "", "err": ""})()


@pytest.mark.parametrize("mode", list(SETTINGS))
def test_two_ranks_write_what_one_does(mode, one_rank, tmp_path, capsys):
    dataset = _dataset(f"ranks-{mode}-two", tmp_path, capsys)
    result = _two_ranks(_regenerate(dataset, mode))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("conversations") == 1  # rank 0 alone prints the summary
    out = _responses(dataset)
    lines = (out / "responses.jsonl").read_text().splitlines()
    assert lines == one_rank[mode] and len(lines) == 9  # the same answers, merged in the same (batch) order
    assert not list(out.glob("responses.part-*"))  # merged and removed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["conversations"] == 9


def _cut_short(dataset: str, reference: list[str], mode: str) -> Path:
    """The state a 2-rank run killed mid-way leaves: rank 0 wrote batches 0 and 2, rank 1 wrote batch 1 and was
    killed while writing batch 3 (one answer whole, the next cut off); nothing merged, the manifest "running"."""
    out = _responses(dataset)
    out.mkdir(parents=True)
    batches = [reference[i : i + BATCH] for i in range(0, len(reference), BATCH)]
    part_path(out, 0).write_text("".join(line + "\n" for line in batches[0] + batches[2]))
    part_path(out, 1).write_text("".join(line + "\n" for line in batches[1] + batches[3][:1]) + batches[3][1][:40])
    manifest = json.loads((_responses(f"ranks-{mode}-one") / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    return out


def test_a_rerun_after_a_rank_was_cut_short_resumes_to_the_same_answers(one_rank, tmp_path, capsys):
    reference = one_rank["sampled"]
    # the same number of ranks
    dataset = _dataset("ranks-cut-two", tmp_path, capsys)
    out = _cut_short(dataset, reference, "sampled")
    result = _two_ranks(_regenerate(dataset, "sampled"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "responses.jsonl").read_text().splitlines() == reference
    assert not list(out.glob("responses.part-*"))
    # another number of ranks: one process reads both parts
    dataset = _dataset("ranks-cut-one", tmp_path, capsys)
    out = _cut_short(dataset, reference, "sampled")
    code, _, err = run_cli(_regenerate(dataset, "sampled"), capsys)
    assert code == 0, err
    assert (out / "responses.jsonl").read_text().splitlines() == reference
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["removed_stale_or_repeated"] == 0


def test_a_held_directory_fails_every_rank_with_its_message(tmp_path, capsys):
    dataset = _dataset("ranks-held", tmp_path, capsys)
    with exclusive_writer(_responses(dataset), "regenerating responses"):
        result = _two_ranks(_regenerate(dataset, "greedy"))  # returns (no rank waits for the lock or the others)
    assert result.returncode == 2
    # each rank's own line (rank 1 repeats rank 0's refusal), then the launcher's naming the rank it saw fail first
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and all("another process (pid" in e and "is regenerating responses in" in e for e in errors)
    assert re.match(r"error: rank [01] of 2 failed: another process", errors[-1])
    assert not (_responses(dataset) / "responses.jsonl").exists()
