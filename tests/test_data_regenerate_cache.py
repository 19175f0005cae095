"""Response regeneration and the target feature cache, on the tiny model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dspark_core.data import feature_cache as cache_module
from dspark_core.data.chat import tokenize_with_assistant_mask
from dspark_core.data.feature_cache import (
    CacheConfig,
    CacheMismatchError,
    CorruptCacheError,
    FeatureCache,
    build_feature_cache,
    default_layer_ids,
    tokenizer_hash,
)
from dspark_core.data.prompts import PromptRecord
from dspark_core.data.regenerate import RegenerationConfig, read_responses, recommended_sampling, regenerate_responses
from dspark_core.decoding import SamplingConfig
from dspark_core.errors import DsparkError

SETTINGS = RegenerationConfig(max_new_tokens=10, batch_size=3, temperature=1.0, top_k=20)


def _prompts(n: int = 7):
    pairs = [(PromptRecord.create([("user", f"Tell me about topic {i}.")], "t"), "validation" if i == 0 else "train")
             for i in range(n)]
    multi = PromptRecord.create([("system", "Be brief."), ("user", "First question?"), ("user", "And a follow-up?")], "t")
    return pairs + [(multi, "train")]


def test_regeneration_answers_every_turn_and_writes_a_manifest(tiny_target, tmp_path):
    manifest = regenerate_responses(tiny_target, _prompts(), tmp_path / "r", SETTINGS, progress=False)
    assert manifest["status"] == "complete" and manifest["conversations"] == 8
    assert manifest["splits"] == {"train": 7, "validation": 1}
    assert manifest["target_revision"] == tiny_target.revision
    _, conversations = read_responses(tmp_path / "r")
    multi = next(c for c in conversations if len(c["response_tokens"]) == 2)
    assert [m["role"] for m in multi["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert all(1 <= n <= 10 for c in conversations for n in c["response_tokens"])


def test_regeneration_resumes_after_a_kill(tiny_target, tmp_path):
    out = tmp_path / "r"
    prompts = _prompts()
    regenerate_responses(tiny_target, prompts[:4], out, SETTINGS, progress=False)
    # A run killed mid-write leaves a partial last line and a "running" manifest.
    with open(out / "responses.jsonl", "a") as handle:
        handle.write('{"id": "half-writ')
    manifest = regenerate_responses(tiny_target, prompts, out, SETTINGS, progress=False)
    lines = (out / "responses.jsonl").read_text().splitlines()
    assert manifest["conversations"] == 8 and len(lines) == 8
    assert len({json.loads(line)["id"] for line in lines}) == 8


def test_regeneration_refuses_to_mix_settings(tiny_target, tmp_path):
    regenerate_responses(tiny_target, _prompts(2), tmp_path / "r", SETTINGS, progress=False)
    other = RegenerationConfig(max_new_tokens=10, batch_size=3, temperature=0.5)
    with pytest.raises(DsparkError, match="would be mixed"):
        regenerate_responses(tiny_target, _prompts(2), tmp_path / "r", other, progress=False)


def test_empty_prompt_source_is_refused(tiny_target, tmp_path):
    with pytest.raises(DsparkError, match="prompt source is empty"):
        regenerate_responses(tiny_target, [], tmp_path / "r", SETTINGS, progress=False)


def test_recommended_sampling_of_packaged_models(tiny_target):
    assert recommended_sampling(tiny_target) == SamplingConfig(temperature=1.0)  # tiny: no recommendation


def test_assistant_mask_covers_exactly_the_assistant_turns(tiny_target):
    messages = [("user", "Hi there"), ("assistant", "Hello! How can I help?"), ("user", "Thanks"), ("assistant", "Bye")]
    ids, mask = tokenize_with_assistant_mask(tiny_target, messages)
    tokenizer = tiny_target.tokenizer
    spans, current = [], []
    for token, flag in zip(ids, mask):
        if flag:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert [tokenizer.decode(s) for s in spans] == ["Hello! How can I help?<|im_end|>", "Bye<|im_end|>"]


@pytest.fixture(scope="module")
def responses(tiny_target, tmp_path_factory):
    out = tmp_path_factory.mktemp("responses")
    regenerate_responses(tiny_target, _prompts(), out, SETTINGS, progress=False)
    return read_responses(out)[1]


def _config(**kwargs) -> CacheConfig:
    return CacheConfig(**{"layer_ids": (0, 2), "dtype": "float32", "shard_tokens": 120, "batch_tokens": 256, **kwargs})


def test_cache_round_trip_matches_a_fresh_target_pass(tiny_target, responses, tmp_path):
    manifest = build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    assert manifest["num_samples"] == 8 and len(manifest["shards"]) > 1
    cache = FeatureCache(tmp_path / "c", target_revision=tiny_target.revision, layer_ids=(0, 2),
                         tokenizer=tokenizer_hash(tiny_target.tokenizer))
    assert len(cache) == 8 and len(FeatureCache(tmp_path / "c", split="validation")) == 1
    by_id = {c["id"]: c for c in responses}
    for index in range(len(cache)):
        sample = cache[index]
        messages = [(m["role"], m["content"]) for m in by_id[sample.id]["messages"]]
        exact = by_id[sample.id]["response_ids"][-1]
        ids, mask = tokenize_with_assistant_mask(tiny_target, messages, last_response_ids=exact)
        # The final response is stored exactly as the target generated it (up to and including its EOS).
        eos = [k for k, t in enumerate(exact) if t in tiny_target.eos_token_ids]
        tail = exact[: eos[0] + 1] if eos else exact
        assert ids[-len(tail):] == tail and all(mask[-len(tail):])
        assert sample.input_ids.tolist() == ids and sample.loss_mask.tolist() == [bool(m) for m in mask]
        fresh = tiny_target.forward_features(torch.tensor([ids]), layer_ids=(0, 2), with_logits=False)
        expected_layers = torch.cat(fresh.layers, -1)[0].float()
        assert torch.allclose(sample.layers, expected_layers, atol=1e-5)
        assert torch.allclose(sample.last_hidden, fresh.last_hidden[0].float(), atol=1e-5)


def test_cache_for_other_target_or_layers_is_refused(tiny_target, responses, tmp_path):
    build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    with pytest.raises(CacheMismatchError, match="was built for target 'tiny:smollm2-135m'"):
        FeatureCache(tmp_path / "c", target_revision="f" * 64)
    with pytest.raises(CacheMismatchError, match=r"holds layers \[0, 2\], but \[1, 3\] were requested"):
        FeatureCache(tmp_path / "c", layer_ids=(1, 3))
    with pytest.raises(CacheMismatchError, match="different tokenizer"):
        FeatureCache(tmp_path / "c", tokenizer="0" * 64)


def test_corrupt_shard_is_detected(tiny_target, responses, tmp_path):
    build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    shard = tmp_path / "c" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError, match="shard-00001.safetensors is corrupt"):
        FeatureCache(tmp_path / "c")


def _fail_on_third_shard(monkeypatch, error: BaseException):
    """Make the cache build stop with `error` when it computes its third shard; returns the real function."""
    original = cache_module._shard_tensors
    calls = []

    def fail_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(cache_module, "_shard_tensors", fail_on_third)
    return original


def test_killed_build_resumes_and_reuses_finished_shards(tiny_target, responses, tmp_path, monkeypatch):
    original = _fail_on_third_shard(monkeypatch, KeyboardInterrupt("killed"))
    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    with pytest.raises(DsparkError, match="interrupted; rerun it to resume"):
        FeatureCache(tmp_path / "c")
    monkeypatch.setattr(cache_module, "_shard_tensors", original)
    shards_before = sorted(p.name for p in (tmp_path / "c").glob("shard-*"))
    manifest = build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    assert len(shards_before) == 2 and len(manifest["shards"]) > 2
    reference = build_feature_cache(tiny_target, responses, tmp_path / "ref", _config(), progress=False)
    assert [e["sha256"] for e in manifest["shards"]] == [e["sha256"] for e in reference["shards"]]


def test_cache_refuses_when_the_disk_is_too_small(tiny_target, responses, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DsparkError, match=r"needs about .* GiB more but .* free"):
        build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    assert not list((tmp_path / "c").glob("shard-*"))


def test_a_build_that_ran_out_of_disk_resumes_with_room_for_the_rest(tiny_target, responses, tmp_path, monkeypatch):
    """The free-space check counts what is left to write, not the whole cache (else a full disk wedges it)."""
    original = _fail_on_third_shard(monkeypatch, OSError(28, "No space left on device"))
    with pytest.raises(OSError):
        build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    monkeypatch.setattr(cache_module, "_shard_tensors", original)
    written = sum(f.stat().st_size for f in (tmp_path / "c").glob("*.safetensors"))
    reference = build_feature_cache(tiny_target, responses, tmp_path / "ref", _config(), progress=False)
    whole = sum(f.stat().st_size for f in (tmp_path / "ref").glob("*.safetensors"))
    free = int((whole - written) * 1.2)  # room for the rest, not for the whole cache
    assert written > 0 and whole * 1.05 > free
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - free, free))
    manifest = build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    assert [e["sha256"] for e in manifest["shards"]] == [e["sha256"] for e in reference["shards"]]


def test_cache_of_nothing_is_refused(tiny_target, tmp_path):
    with pytest.raises(DsparkError, match="dataset is empty"):
        build_feature_cache(tiny_target, [], tmp_path / "c", _config(), progress=False)


def test_default_layer_ids_spread_over_depth():
    assert default_layer_ids(30) == (1, 8, 14, 20, 27)
    assert default_layer_ids(36) == (1, 9, 17, 25, 33)  # DFlash's choice for Qwen3-8B
    assert default_layer_ids(4, 2) == (1,)  # too shallow for two distinct layers


def test_a_shard_cut_short_by_a_full_disk_leaves_no_partial_file(tiny_target, responses, tmp_path, monkeypatch):
    """The disk fills up while a shard's bytes are being written: the partial file is removed at once (it would
    hold space the rerun needs and look like work done), and the rerun writes exactly the uninterrupted cache."""
    import safetensors.torch
    from safetensors import SafetensorError

    real_save, calls = safetensors.torch.save_file, []

    def fills_up(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as handle:
                handle.write(b"\0" * 4096)  # part of the file made it to disk; then safetensors' own error
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", fills_up)
    with pytest.raises(OSError, match="No space left"):
        build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    assert not list((tmp_path / "c").glob(".*.tmp")) and len(list((tmp_path / "c").glob("*.safetensors"))) == 1
    (tmp_path / "c" / ".shard-00009.safetensors.tmp").write_bytes(b"\0" * 64)  # a build killed mid-write
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    manifest = build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    reference = build_feature_cache(tiny_target, responses, tmp_path / "ref", _config(), progress=False)
    assert [e["sha256"] for e in manifest["shards"]] == [e["sha256"] for e in reference["shards"]]
    assert not list((tmp_path / "c").glob(".*.tmp"))


def test_a_cache_of_a_grown_dataset_computes_only_the_new_conversations(tiny_target, responses, tmp_path, monkeypatch):
    """The dataset grew from 5 to 8 conversations: rebuilding its cache runs the target over the 3 new ones only,
    copies the features of the 5 it had, and ends equal to a cache built from scratch; an update killed half-way
    resumes and leaves no earlier version behind."""
    first = build_feature_cache(tiny_target, responses[:5], tmp_path / "c", _config(), progress=False)
    assert first["copied_samples"] == 0
    computed = []
    original = tiny_target.forward_features

    def counting(ids, **kwargs):
        computed.extend(ids.shape[0] * [None])
        return original(ids, **kwargs)

    monkeypatch.setattr(tiny_target, "forward_features", counting)
    killer = _fail_on_third_shard(monkeypatch, KeyboardInterrupt("killed"))
    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    assert (tmp_path / "c.previous" / "manifest.json").exists()  # the earlier version is kept until the end
    monkeypatch.setattr(cache_module, "_shard_tensors", killer)
    grown = build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    assert grown["num_samples"] == 8 and not (tmp_path / "c.previous").exists()
    assert len(computed) == 3 and grown["copied_samples"] == 5
    monkeypatch.setattr(tiny_target, "forward_features", original)
    scratch = build_feature_cache(tiny_target, responses, tmp_path / "ref", _config(), progress=False)
    a, b = FeatureCache(tmp_path / "c"), FeatureCache(tmp_path / "ref")
    assert [a[i].id for i in range(len(a))] == [b[i].id for i in range(len(b))]
    for i in range(len(a)):
        assert torch.equal(a[i].input_ids, b[i].input_ids)
        assert torch.allclose(a[i].layers, b[i].layers, atol=1e-5) and torch.allclose(a[i].lse, b[i].lse, atol=1e-5)
    assert scratch["samples_hash"] == grown["samples_hash"]


def test_building_again_repairs_exactly_the_damaged_shards_and_force_rebuilds_all(tiny_target, responses, tmp_path,
                                                                                 monkeypatch):
    """A shard deleted, one cut short and one bit-flipped: the build the error message names verifies what it
    would reuse and builds exactly those three again, ending with the cache an undamaged build writes."""
    reference = build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    assert len(reference["shards"]) >= 4 and reference["rebuilt_shards"] == 0
    root = tmp_path / "c"
    (root / "shard-00000.safetensors").unlink()
    cut = root / "shard-00001.safetensors"
    cut.write_bytes(cut.read_bytes()[:100])
    flipped = root / "shard-00002.safetensors"
    data = bytearray(flipped.read_bytes())
    data[-10] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError):
        FeatureCache(root)
    built = []
    original = cache_module._shard_tensors
    monkeypatch.setattr(cache_module, "_shard_tensors", lambda target, shard, *a, **k: built.append(shard[0]["id"])
                        or original(target, shard, *a, **k))
    repaired = build_feature_cache(tiny_target, responses, root, _config(), progress=False)
    assert repaired["rebuilt_shards"] == 3 and len(built) == 3
    assert [e["sha256"] for e in repaired["shards"]] == [e["sha256"] for e in reference["shards"]]
    assert len(FeatureCache(root)) == 8
    built.clear()
    again = build_feature_cache(tiny_target, responses, root, _config(), progress=False)
    assert built == [] and again["created_at"] == repaired["created_at"]  # intact: reused as it is
    forced = build_feature_cache(tiny_target, responses, root, _config(), progress=False, force=True)
    assert len(built) == len(reference["shards"]) and forced["copied_samples"] == 0
    assert not (tmp_path / "c.previous").exists()


@pytest.mark.parametrize("damage", ["[1, 2", '{"format_version": 1, "shards": 5}'])
def test_a_damaged_manifest_is_repaired_by_building_again(tiny_target, responses, tmp_path, damage):
    """A manifest cut short or of the wrong shape: reading the cache names it and the command that repairs it;
    building again rebuilds the cache (nothing the manifest listed can be trusted) and it reads as before."""
    from dspark_core.schemas import FileShapeError

    reference = build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    (tmp_path / "c" / "manifest.json").write_text(damage)
    with pytest.raises(FileShapeError, match=r"manifest.json: .*rebuild it with `dspark data cache`"):
        FeatureCache(tmp_path / "c")
    repaired = build_feature_cache(tiny_target, responses, tmp_path / "c", _config(), progress=False)
    assert repaired["rebuilt_shards"] == len(reference["shards"])
    assert [e["sha256"] for e in repaired["shards"]] == [e["sha256"] for e in reference["shards"]]
    assert len(FeatureCache(tmp_path / "c")) == reference["num_samples"]
