"""Greedy speculative decoding must reproduce the target's own greedy decoding token for token."""

from __future__ import annotations

import pytest
import torch

from conftest import RandomDrafter
from dspark_core.decoding.drafter import DraftProposal, DraftRequest, Drafter
from dspark_core.decoding import DraftModelDrafter, GenerationConfig, PromptLookupDrafter, SpeculativeEngine

PROMPTS = ["Hello there, my friend", "one two three one two three one two", "x", "The quick brown fox jumps over"]


def hf_greedy(target, prompt: list[int], n: int) -> list[int]:
    """The target's own greedy decoding through transformers' generate (independent reference)."""
    out = target.model.generate(
        torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def prompts(tiny_target):
    return [tiny_target.encode_prompt(p) for p in PROMPTS]


@pytest.fixture(scope="module")
def references(tiny_target, prompts):
    return [hf_greedy(tiny_target, p, 48) for p in prompts]


def _drafters(target, perturbed):
    yield "none", None
    yield "prompt-lookup", PromptLookupDrafter()
    yield "draft-lm-self", DraftModelDrafter(target, target)
    yield "draft-lm-other", DraftModelDrafter(perturbed, target)
    yield "random", RandomDrafter(list(range(0, 49152, 97)), target.vocab_size, seed=3)


@pytest.mark.parametrize("index", range(5))
def test_batched_greedy_is_identical_to_target_greedy(tiny_target, perturbed_tiny, prompts, references, index):
    name, drafter = list(_drafters(tiny_target, perturbed_tiny))[index]
    engine = SpeculativeEngine(tiny_target, drafter)
    result = engine.generate(prompts, GenerationConfig(max_new_tokens=48, stop_at_eos=False, block_size=5))
    for output, reference in zip(result.outputs, references):
        assert output.tokens == reference, name
        assert output.finish_reason == "length"
    assert result.stats.new_tokens == 48 * len(prompts)


def test_single_request_matches_and_self_draft_accepts_everything(tiny_target, prompts, references):
    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target, tiny_target))
    result = engine.generate([prompts[0]], GenerationConfig(max_new_tokens=48, stop_at_eos=False, block_size=7))
    assert result.outputs[0].tokens == references[0]
    # A draft identical to the target is always right: every full round commits γ + 1 tokens.
    assert result.stats.tau == pytest.approx(48 / 6)
    assert result.stats.prefix_accept[:5] == [1.0] * 5


class NoisyOracleDrafter(Drafter):
    """Proposes the true greedy continuation with each token corrupted with probability `noise`, so rows
    accept different amounts every round and the shared KV cache fills with holes."""

    name = "noisy-oracle"

    def __init__(self, prompts, references, noise: float, seed: int = 0):
        self.full = [p + r for p, r in zip(prompts, references)]
        self.noise = noise
        self.generator = torch.Generator().manual_seed(seed)

    def propose(self, request: DraftRequest) -> DraftProposal:
        proposals = []
        for rid, tokens, limit in zip(request.request_ids, request.tokens, request.max_lengths):
            truth = self.full[rid][len(tokens) : len(tokens) + limit]
            flips = torch.rand(len(truth), generator=self.generator) < self.noise
            proposals.append([(t + 1) % 49152 if f else t for t, f in zip(truth, flips.tolist())])
        return DraftProposal.from_lists(proposals)


def test_long_batched_run_with_many_holes_stays_exact(tiny_target, prompts, monkeypatch):
    """Rows accept different amounts each round and finish at different times: the cache is compacted."""
    import dspark_core.decoding.kv_cache as kv_cache

    compactions = []
    original = kv_cache.BatchedKVCache._maybe_compact

    def counting(self):
        before = self.mask.shape[1]
        original(self)
        compactions.append(before - self.mask.shape[1])

    monkeypatch.setattr(kv_cache.BatchedKVCache, "_maybe_compact", counting)
    # Compact eagerly so it happens many times while several rows are still active.
    monkeypatch.setattr(kv_cache, "_COMPACT_FRACTION", 0.05)
    monkeypatch.setattr(kv_cache, "_COMPACT_MIN_COLUMNS", 8)
    lengths = [120, 90, 60, 120]
    references = [hf_greedy(tiny_target, p, n) for p, n in zip(prompts, lengths)]
    drafter = NoisyOracleDrafter(prompts, references, noise=0.25, seed=5)
    result = SpeculativeEngine(tiny_target, drafter).generate(
        prompts, GenerationConfig(max_new_tokens=120, stop_at_eos=False, block_size=7)
    )
    # Requests 1 and 2 ran past their reference; compare the part we know.
    for output, reference in zip(result.outputs, references):
        assert output.tokens[: len(reference)] == reference
    assert sum(c > 0 for c in compactions) >= 10, "the test should exercise cache compaction"
    assert 1.5 < result.stats.tau < 7


def test_stops_at_eos_inside_accepted_prefix(tiny_target, prompts, references, monkeypatch):
    stop = references[0][10]
    first = references[0].index(stop)
    monkeypatch.setattr(type(tiny_target), "eos_token_ids", property(lambda self: frozenset({stop})))
    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target, tiny_target))
    result = engine.generate([prompts[0]], GenerationConfig(max_new_tokens=48, block_size=7))
    output = result.outputs[0]
    assert output.tokens == references[0][: first + 1]
    assert output.finish_reason == "eos"
    # The EOS round counts its accepted tokens only (no bonus): rounds sum to the tokens generated.
    assert sum(r.emitted for r in output.rounds) == len(output.tokens)


def test_speculative_switch_turns_drafting_off(tiny_target, prompts, references):
    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target, tiny_target))
    result = engine.generate([prompts[1]], GenerationConfig(max_new_tokens=12, stop_at_eos=False, speculative=False))
    assert result.outputs[0].tokens == references[1][:12]
    assert result.stats.rounds == 12 and result.stats.tau == 1.0


def test_context_limit_finishes_request(tiny_target, prompts, monkeypatch):
    monkeypatch.setattr(type(tiny_target), "max_context", property(lambda self: len(prompts[3]) + 5))
    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target, tiny_target))
    result = engine.generate([prompts[3]], GenerationConfig(max_new_tokens=40, stop_at_eos=False))
    assert len(result.outputs[0].tokens) == 5
    assert result.outputs[0].finish_reason == "context"
