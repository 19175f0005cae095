"""Warm starts: a run that continues from an existing draft starts exactly at its parent, records where it came
from, refuses a parent it cannot grow from, and resumes after an interruption to the weights of a run that was
never interrupted."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY
from dspark_core.data.feature_cache import CacheConfig, FeatureCache, build_feature_cache
from dspark_core.data.prompts import PromptRecord
from dspark_core.data.regenerate import RegenerationConfig, read_responses, regenerate_responses
from dspark_core.drafters.checkpoint import load_draft, weights_sha256
from dspark_core.errors import ConfigError, DsparkError
from dspark_core.training import trainer as trainer_module
from dspark_core.training.trainer import DraftTraining, TrainConfig, train_draft
from dspark_core.training.validation import held_out_acceptance
from dspark_core.training.warm_start import parent_settings, read_parent


@pytest.fixture(scope="module")
def cache(tiny_target, tmp_path_factory):
    """The tiny target's greedy answers to six prompts, cached (float32, layers 0-2)."""
    root = tmp_path_factory.mktemp("warm")
    pairs = [(PromptRecord.create([("user", f"Tell me about thing {i}.")], "t"), "train") for i in range(6)]
    regenerate_responses(tiny_target, pairs, root / "r", RegenerationConfig(max_new_tokens=24, temperature=0),
                         progress=False)
    build_feature_cache(tiny_target, read_responses(root / "r")[1], root / "c",
                        CacheConfig(layer_ids=(0, 1, 2), dtype="float32"), progress=False)
    return FeatureCache(root / "c")


def _config(algorithm: str = "dspark", **overrides) -> TrainConfig:
    settings = dict(algorithm=algorithm, steps=8, learning_rate=5e-3, warmup_steps=2, draft_vocab_size=128,
                    block_size=4, head_rank=16, anchors_per_sequence=8, log_every=2, checkpoint_every=4)
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module", params=["dspark", "eagle3"])
def parent(request, tiny_target, cache, tmp_path_factory):
    """A trained first-generation draft."""
    run = tmp_path_factory.mktemp(f"parent-{request.param}")
    return train_draft(tiny_target, cache, run, _config(request.param), progress=False).checkpoint


def test_a_warm_started_run_starts_at_its_parent(tiny_target, cache, parent):
    settings = parent_settings(read_parent(parent))
    run = DraftTraining(tiny_target, cache, _config(**settings, seed=7, warm_start=str(parent)))
    saved = load_file(str(parent / "model.safetensors"))
    state = run.model.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)
    original, _ = load_draft(parent, tiny_target)
    run.model.eval()
    here = held_out_acceptance(run.model, tiny_target, cache, max_length=512).scalars()
    there = held_out_acceptance(original.float(), tiny_target, cache, max_length=512).scalars()
    assert here == pytest.approx(there, abs=1e-6)


def test_a_child_records_its_parent_and_the_lines_totals(tiny_target, cache, parent, tmp_path):
    parent_training = json.loads((parent / "config.json").read_text())["training"]
    child = train_draft(tiny_target, cache, tmp_path / "child",
                        _config(**parent_settings(read_parent(parent)), steps=6, warm_start=str(parent)),
                        progress=False).checkpoint
    training = json.loads((child / "config.json").read_text())["training"]
    assert training["parent"]["weights_sha256"] == weights_sha256(parent)
    assert training["parent"]["path"] == str(parent.resolve())
    assert (parent_training["generation"], training["generation"]) == (0, 1)
    assert training["cumulative_steps"] == parent_training["cumulative_steps"] + 6 == 14
    assert training["cumulative_sequences"] == 14 * 4
    assert training["cumulative_tokens"] == parent_training["cumulative_tokens"] + training["tokens_trained"]
    assert 0 < parent_training["tokens_trained"] and 0 < training["tokens_trained"]
    grandchild = train_draft(tiny_target, cache, tmp_path / "grandchild",
                             _config(**parent_settings(read_parent(child)), steps=2, warm_start=str(child)),
                             progress=False).checkpoint
    assert json.loads((grandchild / "config.json").read_text())["training"]["generation"] == 2


def test_a_parent_it_cannot_grow_from_is_refused_in_one_line(tiny_target, cache, parent, tmp_path):
    algorithm = read_parent(parent).config["algorithm"]
    other = "dflash" if algorithm != "dflash" else "dspark"
    with pytest.raises(DsparkError, match=f"cannot warm-start a {other} draft from .*: it is a {algorithm} draft"):
        DraftTraining(tiny_target, cache, _config(other, warm_start=str(parent)))
    with pytest.raises(DsparkError, match="its block_size is 4, this run builds 5") as refused:
        DraftTraining(tiny_target, cache, _config(**{**parent_settings(read_parent(parent)), "block_size": 5},
                                                  warm_start=str(parent)))
    assert "\n" not in str(refused.value)
    with pytest.raises(DsparkError, match="no such directory"):
        DraftTraining(tiny_target, cache, _config(warm_start=str(tmp_path / "nothing")))
    with pytest.raises(ConfigError, match="leave init at 'random'"):
        _config(init="target", warm_start=str(parent))


@pytest.mark.parametrize("parent", ["dspark"], indirect=True)  # the resume path is the same for every drafter
def test_an_interrupted_continuation_resumes_to_the_uninterrupted_weights(tiny_target, cache, parent, tmp_path,
                                                                         monkeypatch):
    config = _config(**parent_settings(read_parent(parent)), steps=8, warm_start=str(parent))
    straight = train_draft(tiny_target, cache, tmp_path / "straight", config, progress=False).checkpoint

    original, calls = trainer_module.training_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # after the state saved at step 4
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "training_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_draft(tiny_target, cache, tmp_path / "resumed", config, progress=False)
    monkeypatch.setattr(trainer_module, "training_step", original)
    resumed = train_draft(tiny_target, cache, tmp_path / "resumed", config, progress=False).checkpoint
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (json.loads((resumed / "config.json").read_text())["training"]["tokens_trained"]
            == json.loads((straight / "config.json").read_text())["training"]["tokens_trained"])


@pytest.mark.parametrize("parent", ["dspark"], indirect=True)
def test_the_cli_continues_a_draft_with_its_parents_shape(parent, cache, tmp_path):
    """`dspark train --warm-start` takes the parent's algorithm and shape without repeating them."""
    import os
    import subprocess
    import sys

    from dspark_core.data import layout

    cache_dir = layout.cache_dir("warm", TINY, (0, 1, 2), "float32")
    if not cache_dir.exists():
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(cache.path, cache_dir)
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "dspark_cli", "train", "--target", TINY, "--dataset", "warm",
                           "--layer-ids", "0,1,2", "--cache-dtype", "float32", "--steps", "2", "--anchors", "8",
                           "--warm-start", str(parent), "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "grew from" in done.stdout and "10 steps over its whole line" in done.stdout
    child = json.loads((out / "draft" / "config.json").read_text())
    assert child["algorithm"] == read_parent(parent).config["algorithm"]
    assert child["training"]["warm_start"] == str(parent.resolve())
    assert child["module"] == json.loads((parent / "config.json").read_text())["module"]
