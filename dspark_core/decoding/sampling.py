"""Sampling settings and the logits -> probabilities transform shared by target and drafters.

Losslessness needs the target's `p` and the drafter's `q` to come from the *same* transform
(temperature, then top-k, then top-p), so both sides call `probabilities` with one `SamplingConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dspark_core.settings import check_settings, setting


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy (argmax); top_k 0 and top_p 1.0 mean no truncation."""

    temperature: float = setting(0.0, "Sampling temperature; 0 = greedy", min=0)
    top_k: int = setting(0, "Sample among the k most likely tokens only; 0 = off", min=0)
    top_p: float = setting(1.0, "Sample among the most likely tokens that hold this much probability; 1 = off",
                           above=0, max=1)

    def __post_init__(self) -> None:
        check_settings(self)  # NaN refused too

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probabilities(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Float32 probabilities over the last dim after temperature, top-k and top-p. Not for greedy."""
    if config.greedy:
        raise ValueError("greedy decoding uses argmax, not probabilities")
    scores = logits.float() / config.temperature
    if config.top_k and config.top_k < scores.shape[-1]:
        kth = torch.topk(scores, config.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        sorted_probs = sorted_scores.softmax(-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token if the mass before it already does.
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        drop_sorted = mass_before >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of a [..., V] probability tensor; returns [...] token ids."""
    flat = probs.reshape(-1, probs.shape[-1])
    draws = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
    return draws.reshape(probs.shape[:-1])
