"""Training: overfitting a handful of sequences, resuming a killed run, and refusing bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY
from dspark_core.data.chat import render_ids
from dspark_core.data.feature_cache import CacheConfig, FeatureCache, build_feature_cache
from dspark_core.data.prompts import PromptRecord
from dspark_core.data.regenerate import RegenerationConfig, read_responses, regenerate_responses
from dspark_core.decoding import GenerationConfig, SpeculativeEngine
from dspark_core.drafters.checkpoint import load_drafter
from dspark_core.errors import DsparkError
from dspark_core.training import trainer as trainer_module
from dspark_core.training.trainer import TrainConfig, TrainingDivergedError, train_draft

PROMPTS = [f"Question number {i}?" for i in range(4)]


@pytest.fixture(scope="module")
def greedy_cache(tiny_target, tmp_path_factory):
    """The tiny target's own greedy answers to four prompts, cached (float32, layers 0-2)."""
    root = tmp_path_factory.mktemp("overfit")
    pairs = [(PromptRecord.create([("user", p)], "t"), "train") for p in PROMPTS]
    regenerate_responses(tiny_target, pairs, root / "r",
                         RegenerationConfig(max_new_tokens=32, temperature=0), progress=False)
    build_feature_cache(tiny_target, read_responses(root / "r")[1], root / "c",
                        CacheConfig(layer_ids=(0, 1, 2), dtype="float32"), progress=False)
    return FeatureCache(root / "c")


def _overfit_config(algorithm: str, **overrides) -> TrainConfig:
    settings = dict(algorithm=algorithm, steps=120, learning_rate=8e-3, warmup_steps=10, draft_vocab_size=256, block_size=7,
                    head_rank=32, anchors_per_sequence=32, log_every=20, checkpoint_every=1000)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.parametrize("algorithm", ["dspark", "dflash", "eagle3"])
def test_overfit_reproduces_the_target(tiny_target, greedy_cache, tmp_path, algorithm):
    # DFlash's mask slots start as the target's embedding of a special token, which dominates their residual
    # stream at first, and it has no sequential head to lean on: memorizing takes it twice the steps
    # (measured: τ 2.8 after 120 steps, 8.0 after 240; with a learned mask vector 8.0 after 120)
    steps = 240 if algorithm == "dflash" else 120
    result = train_draft(tiny_target, greedy_cache, tmp_path / "run", _overfit_config(algorithm, steps=steps),
                         progress=False)
    history = result.history
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"loss_ce", "loss_tv", "loss_conf", "expected_tau", "accept_1", "positions_per_s"} <= set(history[-1])
    config = json.loads((result.checkpoint / "config.json").read_text())
    assert config["algorithm"] == algorithm and config["target_revision"] == tiny_target.revision
    expected_layers = [0, 1, 2]  # eagle3 picks low/mid/high of the cache: here all three
    assert config["target_layer_ids"] == expected_layers and config["block_size"] == 7
    assert config["training"]["steps"] == steps

    drafter = load_drafter(result.checkpoint, tiny_target)
    prompts = [render_ids(tiny_target, [("user", p)], add_generation_prompt=True) for p in PROMPTS]
    plain = SpeculativeEngine(tiny_target).generate(prompts, GenerationConfig(max_new_tokens=32))
    drafted = SpeculativeEngine(tiny_target, drafter).generate(prompts, GenerationConfig(max_new_tokens=32, block_size=7))
    assert [o.tokens for o in drafted.outputs] == [o.tokens for o in plain.outputs]
    assert drafted.stats.tau > 5.5  # γ + 1 = 8 is the ceiling


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_state(tiny_target, greedy_cache, tmp_path, monkeypatch):
    original = trainer_module.training_step
    calls = []

    def poisoned(*args, **kwargs):
        terms = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 7:
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(trainer_module, "training_step", poisoned)
    config = _overfit_config("dspark", steps=10, checkpoint_every=5)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 7; the last good state \(step 5\)"):
        train_draft(tiny_target, greedy_cache, tmp_path / "run", config, progress=False)
    state = json.loads((tmp_path / "run" / "state" / "state.json").read_text())
    assert state["step"] == 5
    tensors = load_file(str(tmp_path / "run" / "state" / "tensors.safetensors"))
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())


def test_empty_cache_and_foreign_cache_are_refused(tiny_target, perturbed_tiny, greedy_cache, tmp_path):
    empty = FeatureCache(greedy_cache.path, split="validation")
    with pytest.raises(DsparkError, match="has no training samples"):
        train_draft(tiny_target, empty, tmp_path / "a", _overfit_config("dspark"), progress=False)
    perturbed_tiny.snapshot = None
    with pytest.raises(DsparkError, match="was built for 'tiny:smollm2-135m', not 'tiny-perturbed'"):
        train_draft(perturbed_tiny, greedy_cache, tmp_path / "b", _overfit_config("dspark"), progress=False)


def _train_cli(home: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "dspark_cli", "train", "--target", TINY, "--dataset", "resume",
            "--layer-ids", "0,1,2", "--cache-dtype", "float32", "--steps", str(steps), "--checkpoint-every", "2",
            "--log-every", "2", "--draft-vocab", "256", "--head-rank", "16", "--anchors", "8", "--out", str(out)]


def test_killed_training_resumes_to_the_same_weights(greedy_cache, tmp_path):
    """SIGKILL a real `dspark train` process mid-run, rerun it, and compare with an uninterrupted run."""
    home = Path(os.environ["DSPARK_HOME"])
    from dspark_core.data import layout

    cache_dir = layout.cache_dir("resume", TINY, (0, 1, 2), "float32")
    if not cache_dir.exists():
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(greedy_cache.path, cache_dir)
    env = {**os.environ, "DSPARK_HOME": str(home)}
    steps = 16
    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_cli(home, killed, steps), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    from dspark_core.paths import settled_directory

    # the kill may land between the two renames that replace the state: read it as the resume will
    state = lambda: settled_directory(killed / "state") / "state.json"  # noqa: E731
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads(state().read_text())["step"] >= 6:
                break
        except (OSError, ValueError):
            pass  # not written yet, or being replaced right now
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stopped_at = json.loads(state().read_text())["step"]
    assert 6 <= stopped_at < steps, "the run should have been killed mid-way"
    subprocess.run(_train_cli(home, killed, steps), env=env, check=True, capture_output=True)
    straight = tmp_path / "straight"
    subprocess.run(_train_cli(home, straight, steps), env=env, check=True, capture_output=True)
    a = load_file(str(killed / "draft" / "model.safetensors"))
    b = load_file(str(straight / "draft" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert log == list(range(2, steps + 1, 2))


def test_analytic_acceptance_is_ordered_by_position_beyond_nine():
    from dspark_core.recipes.training import TrainReport

    metrics = {f"accept_{k}": k / 100 for k in (1, 2, 10, 11, 3, 9)}
    report = TrainReport(Path("c"), Path("o"), "dspark", 1, metrics, [], 0, Path("p"), 0)
    assert [k for k, _ in report.analytic_acceptance] == list(range(1, 12))
    assert report.analytic_acceptance[9] == (10, 0.10) and report.analytic_acceptance[4] == (5, None)


def test_init_from_target_copies_the_top_layers(tiny_target, greedy_cache):
    """init='target': draft layer i is a copy of target layer L - n + i, the final norm is the target's, and the
    context fusion passes the highest tapped layer through."""
    from dspark_core.training.trainer import build_model

    model = build_model(tiny_target, greedy_cache, _overfit_config("dspark", num_layers=2, init="target"))
    layers = tiny_target.model.model.layers
    for draft_layer, source in zip(model.layers, layers[-2:]):
        assert torch.equal(draft_layer.attention.q_proj.weight, source.self_attn.q_proj.weight)
        assert torch.equal(draft_layer.attention.v_proj.weight, source.self_attn.v_proj.weight)
        assert torch.equal(draft_layer.mlp.down.weight, source.mlp.down_proj.weight)
        assert torch.equal(draft_layer.post_norm.weight, source.post_attention_layernorm.weight)
    assert torch.equal(model.final_norm.weight, tiny_target.model.model.norm.weight)
    features = torch.randn(3, 3 * tiny_target.hidden_size, dtype=model.fuse.weight.dtype)
    assert torch.allclose(model.fuse(features), features[:, -tiny_target.hidden_size:])  # cache layers (0, 1, 2): layer 2
    random = build_model(tiny_target, greedy_cache, _overfit_config("dspark", num_layers=2))
    assert not torch.equal(random.layers[0].attention.q_proj.weight, layers[-2].self_attn.q_proj.weight)
    with pytest.raises(DsparkError, match="eagle3 drafts cannot start from the target's layers"):
        _overfit_config("eagle3", init="target")


def test_target_distribution_from_the_cached_normalizer_equals_the_full_softmax(tiny_target, greedy_cache):
    """The cache stores the log-sum-exp of the target's logits, so training needs only the draft vocabulary's
    rows of the LM head; the distribution must be the same as from the full softmax."""
    from dspark_core.training.losses import TargetDistribution

    sample = greedy_cache[0]
    assert sample.lse is not None and sample.lse.shape == sample.input_ids.shape
    hidden = sample.last_hidden.to(tiny_target.dtype)
    vocab = torch.arange(0, 3000, 7)
    full = TargetDistribution.from_logits(tiny_target.lm_logits(hidden), vocab)
    cached = TargetDistribution.from_draft_logits(tiny_target.lm_logits(hidden, vocab), sample.lse)
    assert torch.allclose(full.draft_probs, cached.draft_probs, atol=1e-6)
    assert torch.allclose(full.outside, cached.outside, atol=1e-5)


def test_wall_clock_budget_times_real_steps_and_scales_the_step_count(tiny_target, greedy_cache):
    from dspark_core.training.budget import seconds_per_step, steps_for_budget

    config = _overfit_config("dspark", block_size=4)
    per_step = seconds_per_step(tiny_target, greedy_cache, config, steps=3, warmup=1)
    assert 0 < per_step < 30
    assert steps_for_budget(tiny_target, greedy_cache, config, 0.0, minimum=7) == 7  # never below the minimum
    assert steps_for_budget(tiny_target, greedy_cache, config, per_step * 1000) > 100


@pytest.mark.parametrize("failing", ["training state", "final checkpoint"])
def test_a_full_disk_while_saving_stops_cleanly_and_the_rerun_resumes(tiny_target, greedy_cache, tmp_path,
                                                                      monkeypatch, failing):
    """ENOSPC in the middle of writing a safetensors file (the periodic training state, or the final draft):
    the error reaches the caller, the half-written copy is discarded, the last complete state stays, and
    running again once there is room gives the weights of an uninterrupted run."""
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    from dspark_core.training.trainer import TrainConfig, train_draft

    config = TrainConfig(steps=8, checkpoint_every=2, log_every=2, draft_vocab_size=256, head_rank=16,
                         anchors_per_sequence=8)
    straight = train_draft(tiny_target, greedy_cache, tmp_path / "straight", config, progress=False)
    state = failing == "training state"
    name, calls, real = ("tensors.safetensors" if state else "model.safetensors"), {"n": 0}, safetensors.torch.save_file

    def disk_fills_up(tensors, path, *args, **kwargs):
        calls["n"] += Path(path).name == name
        if Path(path).name == name and calls["n"] == (3 if state else 1):
            Path(path).write_bytes(b"\0" * 100)  # part of the file made it to disk; safetensors' own error:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_fills_up)
    run = tmp_path / "run"
    with pytest.raises(OSError) as raised:  # reported as the full disk it is (the CLI: "the disk is full ...")
        train_draft(tiny_target, greedy_cache, run, config, progress=False)
    assert raised.value.errno == errno.ENOSPC
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no half-written copy left behind
    saved_step = json.loads((run / "state" / "state.json").read_text())["step"]
    assert saved_step == (4 if state else 8) and not (run / "draft").exists()
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    resumed = train_draft(tiny_target, greedy_cache, run, config, progress=False)
    a = load_file(str(resumed.checkpoint / "model.safetensors"))
    b = load_file(str(straight.checkpoint / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_optimizer_decays_matrices_only():
    from dspark_core.training.trainer import make_optimizer

    matrix, vector = torch.nn.Parameter(torch.zeros(3, 3)), torch.nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer([matrix, vector], TrainConfig(weight_decay=0.1))
    groups = {id(g["params"][0]): g["weight_decay"] for g in optimizer.param_groups}
    assert groups == {id(matrix): 0.1, id(vector): 0.0}


def test_a_run_saved_before_a_setting_existed_resumes_only_with_the_value_it_trained_with():
    from dspark_core.training.trainer import same_settings

    saved = json.loads(json.dumps(TrainConfig(steps=7).to_dict()))
    del saved["sample_from_anchor"]  # a run saved before the setting existed: its anchor slot drafted
    assert same_settings(saved, TrainConfig(steps=7))
    assert not same_settings(saved, TrainConfig(steps=7, sample_from_anchor=False))
    assert not same_settings(saved, TrainConfig(steps=8))
    dflash = json.loads(json.dumps(TrainConfig(algorithm="dflash", steps=7).to_dict()))
    del dflash["sample_from_anchor"]  # an older DFlash run is not the fill-in layout DFlash trains by default now
    assert not same_settings(dflash, TrainConfig(algorithm="dflash", steps=7))
    assert same_settings(dflash, TrainConfig(algorithm="dflash", steps=7, sample_from_anchor=True))


@pytest.mark.parametrize("algorithm", ["dspark", "dflash", "eagle3"])
def test_anchors_beyond_a_batchs_candidates_cost_nothing_and_change_nothing(tiny_target, greedy_cache, algorithm):
    """A recipe asking for more anchors than a sequence has (the reference's 512) draws the same anchors and
    trains on the same logits as one asking for exactly as many: padded blocks are not computed at all."""
    from dspark_core.training.anchors import candidate_anchors
    from dspark_core.training.trainer import build_model, prepare_micro_batch

    model = build_model(tiny_target, greedy_cache, _overfit_config(algorithm, block_size=4))
    sample = greedy_cache[0]
    most = candidate_anchors(sample.loss_mask, sample.input_ids.numel()).numel()
    many = prepare_micro_batch(greedy_cache, [0], [5], model, _overfit_config(algorithm, anchors_per_sequence=4096),
                               "cpu")
    exact = prepare_micro_batch(greedy_cache, [0], [5], model, _overfit_config(algorithm, anchors_per_sequence=most),
                                "cpu")
    assert many.anchors.shape == exact.anchors.shape == (1, most)
    assert torch.equal(many.anchors, exact.anchors)

    # and a padded slot (a repeat of the first anchor, unsupervised) leaves the real blocks' logits unchanged
    batch = exact.batch
    padded = torch.cat([exact.anchors, exact.anchors[:, :1].expand(1, 5)], dim=1)
    with torch.no_grad():
        logits = model(batch.layers, batch.input_ids, batch.lengths, exact.anchors)[0]
        with_padding = model(batch.layers, batch.input_ids, batch.lengths, padded)[0]
    assert torch.allclose(logits, with_padding[:, :most], atol=1e-5)


@pytest.mark.parametrize("sent, code, name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_an_interrupted_run_fails_loudly_and_the_same_command_resumes(greedy_cache, tmp_path, sent, code, name):
    """Ctrl-C or SIGTERM during `dspark train`: a non-zero exit (the shell's 128 + signal), a line saying what was
    interrupted and that rerunning resumes — so `dspark train ... && dspark export ...` stops there."""
    from dspark_core.data import layout
    from dspark_core.paths import settled_directory

    cache_dir = layout.cache_dir("resume", TINY, (0, 1, 2), "float32")
    if not cache_dir.exists():
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(greedy_cache.path, cache_dir)
    out = tmp_path / "run"
    process = subprocess.Popen(_train_cli(Path(os.environ["DSPARK_HOME"]), out, 400), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads((settled_directory(out / "state") / "state.json").read_text())["step"] >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    process.send_signal(sent)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err[-2000:]
    assert f"interrupted ({name}): `dspark train" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    assert not (out / "draft").exists()  # nothing claims to be finished


def test_auto_precision_is_bfloat16_where_the_cpu_multiplies_bfloat16_natively(tiny_target, greedy_cache, tmp_path,
                                                                               monkeypatch):
    """`autocast='auto'` on a CPU follows its bfloat16 instructions (a fixed property of the machine, so a resumed
    run chooses alike): with them it trains exactly what 'bfloat16' trains, without them what 'float32' does."""
    settings = dict(algorithm="dspark", steps=4, draft_vocab_size=256, head_rank=16, anchors_per_sequence=8,
                    log_every=1)
    runs = {}
    for native in (True, False):
        monkeypatch.setattr(trainer_module, "cpu_bfloat16_native", lambda: native)
        runs[native] = train_draft(tiny_target, greedy_cache, tmp_path / f"auto-{native}", TrainConfig(**settings),
                                   progress=False).history
    for mode, native in (("bfloat16", True), ("float32", False)):
        explicit = train_draft(tiny_target, greedy_cache, tmp_path / mode, TrainConfig(**settings, autocast=mode),
                               progress=False).history
        assert [row["loss"] for row in explicit] == [row["loss"] for row in runs[native]], mode
    assert runs[True] != runs[False]
    # a run 'auto' started in float32 does not go on in bfloat16 where 'auto' means bfloat16: it is refused, by name
    monkeypatch.setattr(trainer_module, "cpu_bfloat16_native", lambda: True)
    with pytest.raises(DsparkError, match="trained in float32 and would continue in bfloat16.*--autocast float32"):
        train_draft(tiny_target, greedy_cache, tmp_path / "auto-False", TrainConfig(**settings), progress=False)


def _assert_resumes_to(straight, target, cache, out: Path, config: TrainConfig, monkeypatch, interrupt_at: int) -> None:
    """A run of `config` into `out` interrupted at its `interrupt_at`-th step, then run again, ends with the weights
    of the uninterrupted run `straight`."""
    real_step, calls = trainer_module.DraftTraining.step, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == interrupt_at:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.DraftTraining, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_draft(target, cache, out, config, progress=False)
    monkeypatch.setattr(trainer_module.DraftTraining, "step", real_step)
    resumed = train_draft(target, cache, out, config, progress=False)
    a = load_file(str(resumed.checkpoint / "model.safetensors"))
    b = load_file(str(straight.checkpoint / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("algorithm", ["dspark", "eagle3"])
def test_bfloat16_autocast_trains_what_float32_trains_and_resumes_exactly(tiny_target, greedy_cache, tmp_path,
                                                                         monkeypatch, algorithm):
    """`autocast='bfloat16'` on a CPU: the forward pass really runs in bfloat16 (the losses differ from float32's),
    the loss curve stays within 5 % of the float32 run's at every logged step, and a run stopped after step 7
    resumes (from its state saved at step 6) to the weights of an uninterrupted run: autocast on a CPU is
    deterministic."""
    settings = dict(algorithm=algorithm, steps=12, draft_vocab_size=256, head_rank=16, anchors_per_sequence=8,
                    log_every=2, checkpoint_every=6)
    exact = train_draft(tiny_target, greedy_cache, tmp_path / "f32", TrainConfig(**settings, autocast="float32"),
                        progress=False)
    config = TrainConfig(**settings, autocast="bfloat16")
    straight = train_draft(tiny_target, greedy_cache, tmp_path / "bf16", config, progress=False)
    losses = [[row["loss"] for row in run.history] for run in (exact, straight)]
    assert len(losses[0]) == len(losses[1]) == 6 and losses[0] != losses[1]
    assert max(abs(a - b) / a for a, b in zip(*losses)) < 0.05, losses

    _assert_resumes_to(straight, tiny_target, greedy_cache, tmp_path / "resumed", config, monkeypatch, interrupt_at=8)


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's CPU backend needs a C++ compiler (make test "
                                                         "installs g++)")
def test_compiled_training_trains_what_eager_training_trains_and_resumes_exactly(tiny_target, greedy_cache, tmp_path,
                                                                                monkeypatch):
    """`compile=True` (torch.compile of the draft's forward and of the loss): graphs are really compiled, the loss
    at every logged step is the eager run's within 1e-4 relative (the compiled kernels fuse and reorder float32
    arithmetic, nothing more), and a compiled run stopped after step 5 resumes (from its state saved at step 4) to
    the weights of an uninterrupted compiled run. Compiling is how a run executes, not what it trains: it does not
    change the run's identity."""
    from torch._dynamo.utils import counters

    settings = dict(algorithm="dspark", steps=8, draft_vocab_size=256, head_rank=16, anchors_per_sequence=8,
                    log_every=2, checkpoint_every=4, autocast="float32")
    eager = train_draft(tiny_target, greedy_cache, tmp_path / "eager", TrainConfig(**settings), progress=False)
    config = TrainConfig(**settings, compile=True)
    assert trainer_module.settings_identity(config) == trainer_module.settings_identity(TrainConfig(**settings))
    graphs = counters["stats"]["unique_graphs"]
    straight = train_draft(tiny_target, greedy_cache, tmp_path / "compiled", config, progress=False)
    assert counters["stats"]["unique_graphs"] > graphs  # not silently eager
    losses = [[row["loss"] for row in run.history] for run in (eager, straight)]
    assert len(losses[0]) == len(losses[1]) == 4
    assert max(abs(a - b) / a for a, b in zip(*losses)) < 1e-4, losses

    _assert_resumes_to(straight, tiny_target, greedy_cache, tmp_path / "resumed", config, monkeypatch, interrupt_at=6)
