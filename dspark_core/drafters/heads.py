"""DSpark's sequential heads (docs/architecture.md, "Draft modules"): a transition bias B_k that depends on the previous token.

All heads share W_1 (an embedding of the previous token, rank r) and W_2 (rank r -> draft vocabulary).
`bias(prev, h, state)` returns (B_k, new_state) for one position (drafting, left to right); heads without
state ignore it. `block_bias(embedded, h)` returns every position's bias of a teacher-forced block at once
(training), from the previous tokens' embeddings W_1[x_{k-1}] looked up once for the whole block.
"""

from __future__ import annotations

import torch
from torch import nn


class MarkovHead(nn.Module):
    """B(x_{k-1}, ·) = W_1[x_{k-1}] W_2 — a low-rank bigram correction, independent of h_k."""

    def __init__(self, vocab_size: int, draft_vocab_size: int, hidden: int, rank: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, rank)  # W_1
        self.out = nn.Linear(rank, draft_vocab_size, bias=False)  # W_2
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.zeros_(self.out.weight)  # starts as "no correction": the backbone alone

    def features(self, prev: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.embed(prev)

    def bias(self, prev: torch.Tensor, h: torch.Tensor, state=None):
        return self.out(self.features(prev, h)), state

    def block_bias(self, embedded: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """embedded [..., γ, r] = W_1[x_{k-1}], h [..., γ, d] -> B [..., γ, N]."""
        return self.out(self._gate(embedded, h))

    def _gate(self, embedded: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return embedded


class GatedHead(MarkovHead):
    """The previous-token embedding scaled by a gate σ(W_g [h_k ; W_1[x_{k-1}]]) before W_2."""

    def __init__(self, vocab_size: int, draft_vocab_size: int, hidden: int, rank: int):
        super().__init__(vocab_size, draft_vocab_size, hidden, rank)
        self.gate = nn.Linear(hidden + rank, rank)

    def features(self, prev: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self._gate(self.embed(prev), h)

    def _gate(self, embedded: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return embedded * torch.sigmoid(self.gate(torch.cat([h, embedded], dim=-1)))


class RNNHead(MarkovHead):
    """A gated recurrent state over the block: s_k = σ(g)⊙s_{k-1} + (1-σ(g))⊙tanh(c); B_k = tanh(o) W_2,
    where (g, c, o) = W [s_{k-1}; W_1[x_{k-1}]; h_k]."""

    def __init__(self, vocab_size: int, draft_vocab_size: int, hidden: int, rank: int):
        super().__init__(vocab_size, draft_vocab_size, hidden, rank)
        self.rank = rank
        self.cell = nn.Linear(2 * rank + hidden, 3 * rank)

    def bias(self, prev: torch.Tensor, h: torch.Tensor, state=None):
        return self._step(self.embed(prev), h, state)

    def _step(self, embedded: torch.Tensor, h: torch.Tensor, state):
        if state is None:
            state = h.new_zeros(*h.shape[:-1], self.rank)
        g, c, o = self.cell(torch.cat([state, embedded, h], dim=-1)).chunk(3, dim=-1)
        gate = torch.sigmoid(g)
        state = gate * state + (1 - gate) * torch.tanh(c)
        return self.out(torch.tanh(o)), state

    def block_bias(self, embedded: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        state, biases = None, []
        for k in range(h.shape[-2]):  # the state runs left to right over the block
            bias, state = self._step(embedded[..., k, :], h[..., k, :], state)
            biases.append(bias)
        return torch.stack(biases, dim=-2)

    def features(self, prev: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.embed(prev)


HEADS = {"markov": MarkovHead, "gated": GatedHead, "rnn": RNNHead}
