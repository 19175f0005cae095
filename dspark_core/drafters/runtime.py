"""Trained DSpark / DFlash modules as drafters of the decoding engine (the drafter protocol).

Per request the drafter keeps each draft layer's keys/values of the fused target context, extended with
the features of newly committed positions every round — the context is never recomputed. A round runs the
backbone once over the γ block slots, then samples left to right, adding the sequential head's bias for
the token just drawn (DSpark) or not (DFlash).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dspark_core.decoding.drafter import DraftProposal, DraftRequest, Drafter
from dspark_core.decoding.sampling import probabilities, sample
from dspark_core.drafters.checkpoint import load_draft
from dspark_core.drafters.dspark import DSparkModel


class DSparkDrafter(Drafter):
    def __init__(self, model: DSparkModel, name: str | None = None):
        self.model = model.eval()
        self.name = name or model.config.algorithm
        self.feature_layers = tuple(model.config.target_layer_ids)
        self._contexts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._lengths: dict[int, int] = {}

    @staticmethod
    def from_checkpoint(directory: Path, target) -> "DSparkDrafter":
        model, config = load_draft(directory, target)
        return DSparkDrafter(model, name=f"{config['algorithm']}:{Path(directory).name}")

    def begin(self, prompts: list[list[int]]) -> None:
        self._contexts = {}
        self._lengths = {i: 0 for i in range(len(prompts))}

    def end(self) -> None:
        self._contexts = {}

    def _extend_context(self, request_id: int, features) -> None:
        if features is None or features.layers[0].shape[0] == 0:
            return
        model = self.model
        fused = model.fuse_context(torch.cat(features.layers, dim=-1)[None])
        start = self._lengths[request_id]
        positions = torch.arange(start, start + fused.shape[1], device=fused.device)[None]
        new = model.context_kv(fused, positions)
        old = self._contexts.get(request_id)
        self._contexts[request_id] = new if old is None else [
            (torch.cat([ok, nk], dim=2), torch.cat([ov, nv], dim=2)) for (ok, ov), (nk, nv) in zip(old, new)
        ]
        self._lengths[request_id] = start + fused.shape[1]

    @torch.inference_mode()
    def propose(self, request: DraftRequest) -> DraftProposal:
        model = self.model
        device = model.mask_embedding.device
        vocab = model.draft_vocab
        gamma = model.config.block_size
        width = min(gamma, max(request.max_lengths, default=0))
        rows = len(request.tokens)
        tokens = torch.zeros(rows, width, dtype=torch.long, device=device)
        probs = None if request.sampling.greedy else torch.zeros(rows, width, model.config.vocab_size, device=device)
        confidences = torch.zeros(rows, width, device=device) if model.confidence is not None else None
        for row, (rid, history, limit, features) in enumerate(
            zip(request.request_ids, request.tokens, request.max_lengths, request.new_features)
        ):
            self._extend_context(rid, features)
            anchor_position = len(history) - 1
            if self._lengths[rid] != anchor_position:
                raise RuntimeError(f"draft context has {self._lengths[rid]} positions, expected {anchor_position}")
            limit = min(limit, gamma)
            if limit == 0:
                continue
            anchor = torch.tensor([[history[-1]]], device=device)
            block = model.block_inputs(anchor)  # [1, 1, γ, d] -> [1, γ, d]
            block = block.reshape(1, gamma, -1)
            positions = torch.arange(anchor_position, anchor_position + gamma, device=device)[None]
            context = self._contexts.get(rid)
            if context is None:  # no context yet (a one-token prompt)
                empty = block.new_zeros(1, model.config.num_kv_heads, 0, model.config.head_dim)
                context = [(empty, empty)] * len(model.layers)
            h = model.backbone(block, positions, context, None)[0]  # [γ, d]
            base = model.base_logits(h[:limit])  # [ℓ, N]
            prev = anchor[0]
            state = None
            for k in range(limit):
                bias, state = model.head_bias(prev, h[k : k + 1], state)
                logits = base[k : k + 1] if bias is None else base[k : k + 1] + bias
                if request.sampling.greedy:
                    index = logits.argmax(-1)
                else:
                    q = probabilities(logits, request.sampling)
                    index = sample(q, request.generator)
                    probs[row, k, vocab] = q[0].to(probs.dtype)
                if confidences is not None:
                    confidences[row, k] = torch.sigmoid(model.confidence_logit(prev, h[k : k + 1]))[0]
                prev = vocab[index]
                tokens[row, k] = prev[0]
        lengths = torch.tensor([min(m, gamma) for m in request.max_lengths], dtype=torch.long, device=device)
        return DraftProposal(tokens=tokens, lengths=lengths, probs=probs, confidences=confidences)
