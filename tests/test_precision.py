"""The GPU's precision on a CPU: a target in bfloat16 (what `load_target` picks on CUDA) goes through every
stage — responses, feature cache, training, evaluation — with the same code. (The CUDA device itself cannot
be tested here.)

In bfloat16 a verification pass over several tokens does not compute bit-for-bit the logits of one-token
autoregressive steps, so greedy outputs may part where the target's two best tokens are a rounding error
apart. The test accepts exactly that and nothing else: wherever speculative and autoregressive outputs first
differ, both tokens must be near-ties of the target's own logits at that point."""

from __future__ import annotations

import torch

from conftest import TINY
from dspark_core.data.feature_cache import CacheConfig, FeatureCache, build_feature_cache
from dspark_core.data.prompts import PromptRecord
from dspark_core.data.regenerate import RegenerationConfig, read_responses, regenerate_responses
from dspark_core.evaluation.speculative import eval_prompts
from dspark_core.models import load_target
from dspark_core.recipes.evaluation import EvalConfig, evaluate
from dspark_core.training.trainer import TrainConfig, train_draft


def test_every_stage_runs_with_a_bfloat16_target(tmp_path):
    target = load_target(TINY, device="cpu", dtype="bfloat16")
    assert target.dtype == torch.bfloat16
    records = [PromptRecord.create([("user", f"Tell me fact number {i}.")], "t") for i in range(4)]
    regenerate_responses(target, [(r, "train") for r in records], tmp_path / "r",
                         RegenerationConfig(max_new_tokens=16, temperature=0), progress=False)
    build_feature_cache(target, read_responses(tmp_path / "r")[1], tmp_path / "c",
                        CacheConfig(layer_ids=(0, 1), dtype="bfloat16"), progress=False)
    cache = FeatureCache(tmp_path / "c")
    for algorithm in ("dspark", "eagle3"):
        config = TrainConfig(algorithm=algorithm, steps=4, draft_vocab_size=128, head_rank=16, log_every=2,
                             checkpoint_every=100)
        result = train_draft(target, cache, tmp_path / algorithm, config, progress=False)
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
        report = evaluate(target, result.checkpoint, eval_prompts(target, records[:2]),
                          EvalConfig(max_new_tokens=12, block_size=4))
        for speculative, autoregressive in zip(report.results, report.baseline):
            _assert_parts_only_at_near_ties(target, speculative.prompt.ids, speculative.tokens, autoregressive.tokens)


def _assert_parts_only_at_near_ties(target, prompt: list[int], ours: list[int], reference: list[int]) -> None:
    common = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), None)
    if common is None:
        assert len(ours) == len(reference)
        return
    with torch.no_grad():
        logits = target.model(torch.tensor([prompt + reference[:common]])).logits[0, -1].float()
    top = logits.max()
    for token in (ours[common], reference[common]):
        assert top - logits[token] <= 0.0625 * max(1.0, top.abs().item()), (common, token, top, logits[token])


def test_data_stages_pick_bfloat16_only_where_the_hardware_makes_it_fast(monkeypatch):
    from dspark_core import device as device_module

    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "cpu_bfloat16_speedup", lambda: 4.0)  # e.g. AMX
    assert device_module.data_dtype(cpu) == torch.bfloat16
    assert device_module.resolve_dtype("auto", cpu, for_data=True) == torch.bfloat16
    assert device_module.resolve_dtype("auto", cpu) == torch.float32  # decoding stays exact on CPU
    assert device_module.resolve_dtype("float32", cpu, for_data=True) == torch.float32  # an explicit choice wins
    monkeypatch.setattr(device_module, "cpu_bfloat16_speedup", lambda: 0.5)  # emulated bfloat16
    assert device_module.data_dtype(cpu) == torch.float32
    assert device_module.data_dtype(torch.device("cuda")) == torch.bfloat16
    assert load_target(TINY, device="cpu", for_data=True).dtype == torch.float32
    monkeypatch.setattr(device_module, "cpu_bfloat16_speedup", lambda: 3.0)
    assert load_target(TINY, device="cpu", for_data=True).dtype == torch.bfloat16


def test_cpu_bfloat16_speedup_is_a_measurement():
    from dspark_core.device import cpu_bfloat16_speedup

    speedup = cpu_bfloat16_speedup()
    assert 0 < speedup < 100 and cpu_bfloat16_speedup() == speedup  # measured once per process


def test_a_bfloat16_cache_stores_the_float32_normalizer(tmp_path):
    """The cache's log-normalizer is what training divides float32 logits by: from a bfloat16 target it must
    still be the float32 log-sum-exp of the stored hidden state (bfloat16 logits are off by up to ~0.06)."""
    target = load_target(TINY, device="cpu", dtype="bfloat16")
    records = [PromptRecord.create([("user", f"Count to {i}.")], "t") for i in range(3)]
    regenerate_responses(target, [(r, "train") for r in records], tmp_path / "r",
                         RegenerationConfig(max_new_tokens=12, temperature=0), progress=False)
    assert read_responses(tmp_path / "r")[0]["target_dtype"] == "bfloat16"
    build_feature_cache(target, read_responses(tmp_path / "r")[1], tmp_path / "c",
                        CacheConfig(layer_ids=(0, 1), dtype="bfloat16"), progress=False)
    cache = FeatureCache(tmp_path / "c")
    assert cache.manifest["target_dtype"] == "bfloat16"
    sample = cache[0]
    head = target.model.get_output_embeddings().weight.float()
    exact = (sample.last_hidden.float() @ head.T).logsumexp(-1)
    assert torch.allclose(sample.lse, exact, atol=1e-4)
    rounded = target.lm_logits(sample.last_hidden.to(torch.bfloat16)).float().logsumexp(-1)
    assert not torch.allclose(rounded, exact, atol=1e-4)  # what the cache stored before
