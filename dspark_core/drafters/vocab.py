"""The draft vocabulary: the target tokens a drafter may propose (the most frequent in the training data).

Restricting the draft's LM head to N << V rows cuts the draft round's cost (docs/architecture.md, "Cost on
CPU") without touching losslessness: verification only needs q to be what the drafter sampled from.
"""

from __future__ import annotations

import torch


def select_draft_vocab(token_streams, vocab_size: int, size: int, always: set[int] = frozenset()) -> torch.Tensor:
    """The `size` most frequent token ids over `token_streams` (iterables of id tensors), plus `always`
    (e.g. EOS), sorted ascending. Ties and unseen tokens are filled by id order."""
    size = min(size, vocab_size)
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for ids in token_streams:
        counts += torch.bincount(ids.long().flatten(), minlength=vocab_size)[:vocab_size]
    for token in always:
        counts[token] = counts.max() + 1
    # By count descending, then id ascending (one integer key keeps the order deterministic).
    key = counts * vocab_size + (vocab_size - 1 - torch.arange(vocab_size))
    chosen = torch.argsort(key, descending=True)[:size]
    return torch.sort(chosen).values


def coverage(draft_vocab: torch.Tensor, token_streams) -> float:
    """Fraction of tokens in the streams that the draft vocabulary contains."""
    member = torch.zeros(int(draft_vocab.max()) + 1, dtype=torch.bool)
    member[draft_vocab] = True
    hit = total = 0
    for ids in token_streams:
        ids = ids.long().flatten()
        inside = ids < member.numel()
        hit += int(member[ids[inside]].sum())
        total += ids.numel()
    return hit / total if total else 0.0
