import torch

from dspark_core.decoding.verification import residual_distribution, verify_greedy, verify_sampled


def _one_hot_logits(choices: list[list[int]], vocab: int = 6) -> torch.Tensor:
    logits = torch.zeros(len(choices), len(choices[0]), vocab)
    for b, row in enumerate(choices):
        for j, token in enumerate(row):
            logits[b, j, token] = 5.0
    return logits


def test_greedy_accepts_matching_prefix_then_emits_target_choice():
    # Target's argmax at [anchor, x1, x2, x3] positions: 1, 2, 3, 4
    logits = _one_hot_logits([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    drafts = torch.tensor([[1, 2, 3], [1, 5, 3], [0, 2, 3]])
    result = verify_greedy(drafts, torch.tensor([3, 3, 3]), logits)
    assert result.accepted.tolist() == [3, 1, 0]
    assert result.next_token.tolist() == [4, 2, 1]


def test_greedy_respects_row_lengths():
    logits = _one_hot_logits([[1, 2, 3, 4], [1, 2, 3, 4]])
    drafts = torch.tensor([[1, 2, 3], [1, 2, 0]])  # row 1 proposed only 1 token; padding must not count
    result = verify_greedy(drafts, torch.tensor([3, 1]), logits)
    assert result.accepted.tolist() == [3, 1]
    assert result.next_token.tolist() == [4, 2]


def test_residual_removes_draft_mass():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    q = torch.tensor([[0.7, 0.1, 0.2]])
    assert torch.allclose(residual_distribution(p, q), torch.tensor([[0.0, 1.0, 0.0]]))
    # Identical distributions: fall back to p (a rejection then has probability zero anyway).
    assert torch.allclose(residual_distribution(p, p), p)


def test_sampled_identical_distributions_always_accept():
    probs = torch.softmax(torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0)), -1)
    drafts = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 1]])
    result = verify_sampled(drafts, torch.tensor([2, 2, 2, 2]), probs[:, :2], probs, torch.Generator().manual_seed(1))
    assert result.accepted.tolist() == [2, 2, 2, 2]


def test_sampled_point_mass_outside_target_support_is_rejected_and_never_reemitted():
    target = torch.tensor([[[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]]).expand(200, -1, -1)
    drafts = torch.zeros(200, 1, dtype=torch.long)  # token 0 has target probability 0 at position 1
    result = verify_sampled(drafts, torch.ones(200, dtype=torch.long), None, target, torch.Generator().manual_seed(0))
    assert result.accepted.sum() == 0
    assert set(result.next_token.tolist()) <= {1, 2}


def test_prompt_lookup_copies_after_latest_match():
    from dspark_core.decoding.prompt_lookup import lookup_continuation

    tokens = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2]
    # Suffix (1, 2) last occurred at index 5 -> continuation 3, 7, 8.
    assert lookup_continuation(tokens, 3, max_ngram=3, min_ngram=2) == [3, 7, 8]
    assert lookup_continuation(tokens, 10, max_ngram=3, min_ngram=2) == [3, 7, 8, 5, 1, 2]
    assert lookup_continuation([4, 5, 6], 3, max_ngram=3, min_ngram=2) == []  # no earlier bigram
    assert lookup_continuation([4, 5, 4], 2, max_ngram=3, min_ngram=1) == [5, 4]  # unigram fallback
