"""Online target features: the target computes each batch's features while the draft trains, and the draft sees
what the feature cache would have given it."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, run_cli
from dspark_core.data import layout
from dspark_core.data import online_features as online_module
from dspark_core.data.feature_cache import CacheConfig, FeatureCache, build_feature_cache
from dspark_core.data.online_features import OnlineFeatures, OnlineMemoryError
from dspark_core.data.prompts import PromptRecord
from dspark_core.data.regenerate import RegenerationConfig, read_responses, regenerate_responses
from dspark_core.recipes.training import train
from dspark_core.training.trainer import TrainConfig, train_draft

FEATURES = CacheConfig(layer_ids=(0, 1, 2), dtype="float32")


DATASET = "online"


@pytest.fixture(scope="module")
def responses_and_cache(tiny_target, tmp_path_factory):
    """A dataset's responses where the commands find them, and their cache (float32, layers 0-2) elsewhere."""
    responses = layout.responses_dir(DATASET, TINY)
    pairs = [(PromptRecord.create([("user", f"Tell me about item {i}.")], "t"), "validation" if i % 4 == 0 else "train")
             for i in range(10)]
    regenerate_responses(tiny_target, pairs, responses, RegenerationConfig(max_new_tokens=24, temperature=0),
                         progress=False)
    cache = tmp_path_factory.mktemp("online") / "cache"
    build_feature_cache(tiny_target, read_responses(responses)[1], cache, FEATURES, progress=False)
    return responses, cache


def test_an_online_batch_holds_what_the_cache_holds(tiny_target, responses_and_cache):
    responses, cache_path = responses_and_cache
    cache = FeatureCache(cache_path, split="train")
    online = OnlineFeatures.from_responses(tiny_target, responses, FEATURES).split("train")
    assert len(online) == len(cache) and [online[i].id for i in range(len(online))] == [cache[i].id for i in range(len(cache))]
    assert online.manifest["samples_hash"] == cache.manifest["samples_hash"]
    indices = [3, 0, 5]
    for layer_ids in ((0, 1, 2), (2, 0)):
        a = cache.batch(indices, max_length=20, layer_ids=layer_ids, device="cpu", dtype=torch.float32)
        b = online.batch(indices, max_length=20, layer_ids=layer_ids, device="cpu", dtype=torch.float32)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
        assert torch.equal(a.lengths, b.lengths)
        for name in ("layers", "last_hidden", "lse"):  # float64 target, float32 storage: rounding noise at most
            assert torch.allclose(getattr(a, name), getattr(b, name), rtol=1e-6, atol=1e-6), name
        assert not b.layers.is_inference() and b.layers.shape == a.layers.shape


def test_online_training_gives_the_cached_loss_on_the_same_batches(tiny_target, responses_and_cache, tmp_path):
    responses, cache_path = responses_and_cache
    config = TrainConfig(steps=12, log_every=2, checkpoint_every=100, draft_vocab_size=256, head_rank=16,
                         anchors_per_sequence=8)
    cached = train_draft(tiny_target, FeatureCache(cache_path, split="train"), tmp_path / "cached", config,
                         progress=False)
    report = train(tiny_target, responses, config, out_dir=tmp_path / "online", progress=False,
                   online_features=FEATURES)
    ours, theirs = [h["loss"] for h in report.history], [h["loss"] for h in cached.history]
    assert len(ours) == len(theirs) == 6
    assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(ours, theirs)), (ours, theirs)
    assert "val_tau" in report.final_metrics  # held-out acceptance, on online features of the validation split


def test_an_online_run_without_memory_for_the_target_is_refused(tiny_target, responses_and_cache, tmp_path,
                                                                monkeypatch):
    responses, _ = responses_and_cache
    monkeypatch.setattr(online_module, "available_memory", lambda device: 1024)
    with pytest.raises(OnlineMemoryError, match=r"GiB free; lower --micro-batch or --max-length, or build a feature "
                                                r"cache"):
        train(tiny_target, responses, TrainConfig(steps=2), out_dir=tmp_path / "run", progress=False,
              online_features=FEATURES)
    assert not (tmp_path / "run").exists()


def test_the_cache_estimate_names_the_mode_that_fits_and_a_full_disk_names_the_online_mode(
        tiny_target, responses_and_cache, tmp_path, capsys, monkeypatch):
    from collections import namedtuple

    from dspark_core.data import feature_cache
    from dspark_core.recipes import features

    arguments = ["data", "cache", "--target", TINY, "--dataset", DATASET, "--layer-ids", "0,1,2", "--dtype", "float32",
                 "--estimate"]
    code, out, _ = run_cli(arguments, capsys)
    samples = len(FeatureCache(responses_and_cache[1]))
    per_token = (3 + 1) * tiny_target.hidden_size * 4 + 9
    assert code == 0 and f"{per_token / 1024:.1f} KiB" in out and f"│ {samples} " in out and "cached" in out
    assert not layout.cache_dir(DATASET, TINY, (0, 1, 2), "float32").exists()  # an estimate builds nothing

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(features.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    code, out, _ = run_cli(arguments, capsys)
    assert code == 0 and "online (`dspark train --online-features`)" in out
    monkeypatch.setattr(feature_cache.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    code, _, err = run_cli(arguments[:-1], capsys)
    assert code == 2 and "GiB free" in err and "dspark train ... --online-features" in err
