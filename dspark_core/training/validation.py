"""Held-out acceptance of a draft, measured on a feature cache instead of by decoding: for every anchor of the
held-out sequences, the block the draft proposes greedily and how many of its tokens the target's greedy
choice would accept.

Teacher forcing is exact here: a slot's previous token is the gold token, and as long as the earlier slots
were accepted, greedy decoding would have drafted those same tokens. With responses regenerated greedily
the gold token *is* the target's greedy choice; with sampled responses the chain is judged against the
target's argmax all the same (its context is then the sampled text). The result predicts greedy τ and the
per-position acceptance of real decoding at a small fraction of the cost, which makes it the yardstick for
comparing training recipes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dspark_core.data.feature_cache import FeatureCache
from dspark_core.drafters.base import DraftModule
from dspark_core.models.target import TargetModel
from dspark_core.training.anchors import block_targets, candidate_anchors


@dataclass
class HeldOutAcceptance:
    tau: float  # 1 + mean accepted prefix length over anchors (bonus token included)
    #: per slot k: among anchors whose slots 1..k-1 were accepted, the share whose slot k was
    cond_accept: list[float | None]
    #: per slot k: the share of anchors where the draft's token equals the target's greedy token
    top1: list[float | None]
    anchors: int
    sequences: int

    def scalars(self, prefix: str = "val_") -> dict[str, float]:
        out = {f"{prefix}tau": self.tau}
        out.update({f"{prefix}accept_{k}": v for k, v in enumerate(self.cond_accept, 1) if v is not None})
        return out


@torch.inference_mode()
def held_out_acceptance(model: DraftModule, target: TargetModel, cache: FeatureCache, *, max_sequences: int = 64,
                        max_length: int = 512, batch_size: int = 4, anchors_per_chunk: int = 64) -> HeldOutAcceptance:
    """Greedy chain acceptance over every anchor of (up to `max_sequences` of) `cache`'s samples."""
    was_training = model.training
    model.eval()
    gamma = model.config.block_size
    device, dtype = target.device, (torch.float32 if target.device.type == "cpu" else torch.bfloat16)
    accepted_lengths, valid_lengths = [], []
    agree, counted = torch.zeros(gamma), torch.zeros(gamma)
    indices = list(range(min(len(cache), max_sequences)))
    for start in range(0, len(indices), batch_size):
        batch = cache.batch(indices[start:start + batch_size], max_length=max_length,
                            layer_ids=model.config.target_layer_ids, device=device, dtype=dtype)
        greedy = target.lm_logits(batch.last_hidden.to(target.dtype)).argmax(-1)  # [B, T]: the token after each position
        for row in range(batch.input_ids.shape[0]):
            n = int(batch.lengths[row])
            candidates = candidate_anchors(batch.loss_mask[row, :n].cpu(), n).to(device)
            for chunk in candidates.split(anchors_per_chunk):
                ids, mask = batch.input_ids[row:row + 1], batch.loss_mask[row:row + 1]
                anchors = chunk[None]
                logits, _ = model.forward_train(batch.layers[row:row + 1], ids, batch.lengths[row:row + 1], anchors)
                drafted = model.draft_vocab[logits.argmax(-1)][0]  # [A, γ]
                _, supervised = block_targets(ids, mask, batch.lengths[row:row + 1], anchors,
                                              torch.ones_like(anchors, dtype=torch.bool), gamma)
                source = (chunk[:, None] + torch.arange(gamma, device=device)).clamp_max(n - 1)
                hits = (drafted == greedy[row, source]) & supervised[0]  # [A, γ]
                agree += hits.float().sum(0).cpu()
                counted += supervised[0].float().sum(0).cpu()
                run = hits.long().cumprod(dim=1).sum(dim=1)  # accepted prefix length per anchor
                accepted_lengths.append(run.cpu())
                valid_lengths.append(supervised[0].long().sum(dim=1).cpu())
    if was_training:
        model.train()
    runs = torch.cat(accepted_lengths) if accepted_lengths else torch.zeros(0, dtype=torch.long)
    valid = torch.cat(valid_lengths) if valid_lengths else torch.zeros(0, dtype=torch.long)
    cond = []
    for k in range(1, gamma + 1):
        eligible = (runs >= k - 1) & (valid >= k)  # slots 1..k-1 accepted, and slot k judged at all
        cond.append(float((runs[eligible] >= k).sum()) / int(eligible.sum()) if eligible.any() else None)
    top1 = [float(a / c) if c else None for a, c in zip(agree.tolist(), counted.tolist())]
    return HeldOutAcceptance(tau=1.0 + float(runs.float().mean()) if runs.numel() else 1.0, cond_accept=cond,
                             top1=top1, anchors=int(runs.numel()), sequences=len(indices))
