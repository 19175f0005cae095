"""Prompt-lookup drafting: copy the continuation of the latest earlier occurrence of the context's suffix."""

from __future__ import annotations

import torch

from dspark_core.decoding.drafter import DraftProposal, DraftRequest, Drafter
from dspark_core.errors import ConfigError


def lookup_continuation(tokens: list[int], max_tokens: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Longest suffix n-gram (max_ngram..min_ngram) found earlier in `tokens`; return what followed its
    most recent earlier occurrence (up to max_tokens), or [] if none."""
    if max_tokens <= 0 or len(tokens) < 2:
        return []
    history = torch.tensor(tokens, dtype=torch.long)
    for n in range(min(max_ngram, len(tokens) - 1), min_ngram - 1, -1):
        suffix = history[-n:]
        windows = history[:-1].unfold(0, n, 1)  # windows ending before the last token
        starts = torch.nonzero((windows == suffix).all(dim=1)).flatten()
        if starts.numel():
            start = int(starts[-1]) + n
            return tokens[start : start + max_tokens]
    return []


class PromptLookupDrafter(Drafter):
    """Deterministic n-gram copy from the request's own context (no model). Proposals are point masses."""

    name = "prompt-lookup"

    # Defaults measured on SmolLM2 (benchmarks/bench_decoding.py): unigram matches mostly propose junk.
    def __init__(self, max_ngram: int = 3, min_ngram: int = 2):
        if not 1 <= min_ngram <= max_ngram:
            raise ConfigError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(self, request: DraftRequest) -> DraftProposal:
        proposals = [
            lookup_continuation(tokens, limit, self.max_ngram, self.min_ngram)
            for tokens, limit in zip(request.tokens, request.max_lengths)
        ]
        return DraftProposal.from_lists(proposals)
