"""Rules out a defect in the training path: on a target whose next token is a learnable function of what the
draft sees, a draft trained on the target's feature cache must reach near-perfect acceptance on sequences
it never saw.

The target is a tiny Llama trained to follow x_{t+1} = PERM[x_{t-1}]: each token is a fixed permutation of
the token two positions back. Drafting after anchor x_n, block slot 1 must predict PERM[x_{n-1}], which only
the target's features at position n-1 carry (the anchor's own features do not exist yet); slot 2 needs
PERM[x_n], the anchor itself; later slots compose the two. An off-by-one anywhere between the cached
features, the anchors, the labels and the runtime context shows up as low acceptance on slot 1 or 2.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dspark_core.data.feature_cache import CacheConfig, FeatureCache, write_feature_cache
from dspark_core.decoding import GenerationConfig, SpeculativeEngine
from dspark_core.drafters.checkpoint import load_draft, load_drafter
from dspark_core.models.target import TargetModel
from dspark_core.training.trainer import TrainConfig, train_draft
from dspark_core.training.validation import held_out_acceptance

VOCAB = 24
PERM = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(7)).tolist()
LENGTH = 48
PROMPT = 8


def _rule_sequence(first: int, second: int, length: int = LENGTH) -> list[int]:
    tokens = [first, second]
    while len(tokens) < length:
        tokens.append(PERM[tokens[-2]])
    return tokens


@pytest.fixture(scope="module")
def rule_target(tiny_target) -> TargetModel:
    """A 2-layer Llama that has learned the rule (checked: its greedy output follows it)."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(250):
        starts = torch.randint(0, VOCAB, (64, 2), generator=generator).tolist()
        batch = torch.tensor([_rule_sequence(a, b) for a, b in starts])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    target = TargetModel(model.eval(), tiny_target.tokenizer, None, "rule-llama")
    # The tokenizer's EOS ids fall inside this tiny vocabulary: generation never stops at EOS here.
    out = SpeculativeEngine(target).generate([[3, 5], [11, 2]], GenerationConfig(max_new_tokens=30, stop_at_eos=False))
    for prompt, output in zip([[3, 5], [11, 2]], out.outputs):
        assert prompt + output.tokens == _rule_sequence(*prompt, length=32), "the target did not learn the rule"
    return target


def _pairs(count: int, seed: int, exclude: set = frozenset()) -> list[tuple[int, int]]:
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    while len(pairs) < count:
        pair = tuple(torch.randint(0, VOCAB, (2,), generator=generator).tolist())
        if pair not in exclude and pair not in pairs:
            pairs.append(pair)
    return pairs


@pytest.mark.parametrize("algorithm", ["dspark", "dflash", "eagle3"])
def test_draft_reaches_near_perfect_acceptance_on_unseen_sequences(rule_target, tmp_path, algorithm):
    train_pairs = _pairs(96, seed=1)
    samples = [{"id": f"s{i}", "split": "train", "ids": _rule_sequence(*pair), "mask": [0, 0] + [1] * (LENGTH - 2)}
               for i, pair in enumerate(train_pairs)]
    write_feature_cache(rule_target, samples, tmp_path / "cache", CacheConfig(layer_ids=(0, 1), dtype="float32"),
                        progress=False)
    config = TrainConfig(algorithm=algorithm, steps=300, batch_size=8, anchors_per_sequence=32, learning_rate=3e-3,
                         warmup_steps=10, block_size=4, head_rank=16, draft_vocab_size=VOCAB, log_every=50,
                         checkpoint_every=1000)
    result = train_draft(rule_target, FeatureCache(tmp_path / "cache"), tmp_path / "run", config, progress=False)

    # Unseen sequences, judged after a prompt of PROMPT tokens (real requests have one; the target's features
    # at its very first positions are atypical and rare in training).
    unseen = _pairs(16, seed=2, exclude=set(train_pairs))
    held_out = [{"id": f"u{i}", "split": "validation", "ids": _rule_sequence(*pair),
                 "mask": [0] * PROMPT + [1] * (LENGTH - PROMPT)} for i, pair in enumerate(unseen)]
    write_feature_cache(rule_target, held_out, tmp_path / "held-out", CacheConfig(layer_ids=(0, 1), dtype="float32"),
                        progress=False)
    model, _ = load_draft(result.checkpoint, rule_target)
    measured = held_out_acceptance(model, rule_target, FeatureCache(tmp_path / "held-out"))
    assert min(measured.cond_accept) > 0.95, f"{algorithm}: acceptance by position {measured.cond_accept}"

    # Real decoding of the unseen sequences agrees: lossless, and nearly every block accepted.
    prompts = [_rule_sequence(*pair, length=PROMPT) for pair in unseen]
    out = SpeculativeEngine(rule_target, load_drafter(result.checkpoint, rule_target)).generate(
        prompts, GenerationConfig(max_new_tokens=40, block_size=4, stop_at_eos=False))
    assert [p + o.tokens for p, o in zip(prompts, out.outputs)] == [_rule_sequence(*p[:2], length=PROMPT + 40) for p in prompts]
    # γ + 1 = 5 is the ceiling; the last round of each request is shortened by max_new_tokens.
    assert out.stats.tau > 4.3, f"{algorithm}: τ {out.stats.tau:.2f}, acceptance by position {out.stats.cond_accept}"
