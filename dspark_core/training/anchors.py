"""Anchor sampling: where in a training sequence a draft block starts (docs/architecture.md, "Training objective")."""

from __future__ import annotations

import torch


def candidate_anchors(loss_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Positions a >= 1 whose next token (a + 1) is an assistant token: a block there predicts what the target
    said. (a = 0 would leave no target context to condition on.)"""
    if length < 3:
        return torch.zeros(0, dtype=torch.long)
    return torch.nonzero(loss_mask[2:length]).flatten() + 1


def sample_anchors(loss_masks: list[torch.Tensor], count: int,
                   generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `count` distinct anchors per sequence, sorted, each sequence drawing from its own generator (so its
    anchors do not depend on the sequences it is batched with); returns (anchors [B, A], valid [B, A]).

    A is the most anchors any of these sequences has, at most `count`: a recipe asking for more anchors than a
    short sequence holds (the reference's 512, or every position) pays for the sequences' real candidates, not
    for `count` padded blocks. Sequences with fewer candidates repeat their first anchor in the padding slots
    (marked invalid)."""
    candidates = [candidate_anchors(mask, mask.numel()) for mask in loss_masks]
    width = max(1, min(count, max((c.numel() for c in candidates), default=0)))
    anchors = torch.zeros(len(loss_masks), width, dtype=torch.long)
    valid = torch.zeros(len(loss_masks), width, dtype=torch.bool)
    for row, (choices, generator) in enumerate(zip(candidates, generators, strict=True)):
        if choices.numel() == 0:
            continue
        chosen = choices[torch.randperm(choices.numel(), generator=generator)[:count]].sort().values
        anchors[row, : chosen.numel()] = chosen
        anchors[row, chosen.numel():] = chosen[0]
        valid[row, : chosen.numel()] = True
    return anchors, valid


def block_targets(input_ids: torch.Tensor, loss_mask: torch.Tensor, lengths: torch.Tensor, anchors: torch.Tensor,
                  valid_anchor: torch.Tensor, gamma: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For block position k (1..γ) of each anchor: the gold token at anchor + k and whether it is supervised.

    Supervision covers the valid prefix only: it stops at the sequence end or the first non-assistant token.
    Returns (targets [B, A, γ], supervised [B, A, γ] bool)."""
    batch, length = input_ids.shape
    positions = anchors[:, :, None] + torch.arange(1, gamma + 1, device=anchors.device)
    inside = positions < lengths[:, None, None]
    clamped = positions.clamp_max(length - 1)
    targets = input_ids.gather(1, clamped.reshape(batch, -1)).view_as(positions)
    assistant = loss_mask.gather(1, clamped.reshape(batch, -1)).view_as(positions) & inside
    supervised = assistant.long().cumprod(dim=2).bool() & valid_anchor[:, :, None]
    return targets, supervised
