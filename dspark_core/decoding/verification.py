"""Lossless verification of drafted blocks (docs/architecture.md, "Verification"), batched over requests.

Sampled: accept x_k with probability min(1, p_k(x_k)/q_k(x_k)); at the first rejection draw from
normalize(max(0, p_k - q_k)); if all are accepted draw a bonus token from p_{l+1}.
Greedy: accept while x_k == argmax p_k; then emit argmax at the first mismatch (or the bonus position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dspark_core.decoding.sampling import sample


@dataclass
class VerifyResult:
    accepted: torch.Tensor  # [B] number of accepted draft tokens
    next_token: torch.Tensor  # [B] replacement or bonus token


def _accepted_prefix(accept: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Length of the all-True prefix of each row, capped at the row's draft length."""
    width = accept.shape[1]
    valid = torch.arange(width, device=accept.device)[None, :] < lengths[:, None]
    return (accept & valid).long().cumprod(dim=1).sum(dim=1)


def verify_greedy(draft_tokens: torch.Tensor, lengths: torch.Tensor, target_logits: torch.Tensor) -> VerifyResult:
    """draft_tokens [B, L-1], lengths [B], target_logits [B, L, V] over [anchor, drafts...]."""
    target_choice = target_logits.argmax(dim=-1)
    accepted = _accepted_prefix(draft_tokens == target_choice[:, :-1], lengths)
    next_token = target_choice.gather(1, accepted[:, None]).squeeze(1)
    return VerifyResult(accepted, next_token)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalize(max(0, p - q)) per row; falls back to p where p <= q everywhere (then p == q)."""
    residual = (p - q).clamp_min(0)
    mass = residual.sum(-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp_min(torch.finfo(mass.dtype).tiny), p)


def verify_sampled(
    draft_tokens: torch.Tensor,
    lengths: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
) -> VerifyResult:
    """Rejection sampling. `draft_probs` [B, L-1, V] is what the drafter sampled from; None means point masses
    (deterministic drafters such as prompt lookup), i.e. q_k = one_hot(x_k)."""
    batch, width = draft_tokens.shape
    rows = torch.arange(batch, device=draft_tokens.device)
    if width:
        p_x = target_probs[:, :width].gather(2, draft_tokens[:, :, None]).squeeze(2)
        q_x = torch.ones_like(p_x) if draft_probs is None else draft_probs.gather(2, draft_tokens[:, :, None]).squeeze(2)
        uniform = torch.rand(p_x.shape, generator=generator, device=p_x.device, dtype=p_x.dtype)
        # u < p/q  <=>  u*q < p; q > 0 for every token the drafter actually sampled.
        accepted = _accepted_prefix(uniform * q_x < p_x, lengths)
    else:
        accepted = torch.zeros(batch, dtype=torch.long, device=draft_tokens.device)

    p_next = target_probs[rows, accepted]  # distribution at the first unaccepted position
    rejected = accepted < lengths
    if rejected.any():
        at = accepted.clamp_max(max(width - 1, 0))
        if draft_probs is None:
            q_next = torch.zeros_like(p_next)
            q_next[rows, draft_tokens[rows, at]] = 1.0
        else:
            q_next = draft_probs[rows, at]
        p_next = torch.where(rejected[:, None], residual_distribution(p_next, q_next), p_next)
    return VerifyResult(accepted, sample(p_next, generator))
