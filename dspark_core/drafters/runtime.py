"""Trained DSpark / DFlash / Eagle3 modules as drafters of the decoding engine (the drafter protocol).

Per request the drafter keeps each draft layer's keys/values of the fused target context, extended with
the features of newly committed positions every round — the context is never recomputed. A round runs the
backbone once over the block's slots (γ, or γ + 1 when the anchor slot drafts nothing), then samples left to
right, adding the sequential head's bias for the token just drawn (DSpark) or not (DFlash).
"""

from __future__ import annotations

import torch

from dspark_core.decoding.drafter import DraftProposal, DraftRequest, Drafter
from dspark_core.decoding.sampling import probabilities, sample
from dspark_core.drafters.dspark import DSparkModel
from dspark_core.drafters.eagle3 import Eagle3Model


def _empty_block(request: DraftRequest, gamma: int, vocab_size: int, device):
    """Zeroed proposal tensors for a round: (width, tokens [R, width], probs [R, width, V] or None if greedy)."""
    width = min(gamma, max(request.max_lengths, default=0))
    rows = len(request.tokens)
    tokens = torch.zeros(rows, width, dtype=torch.long, device=device)
    probs = None if request.sampling.greedy else torch.zeros(rows, width, vocab_size, device=device)
    return width, tokens, probs


def _draw(logits: torch.Tensor, vocab: torch.Tensor, request: DraftRequest, probs, row: int, k: int) -> torch.Tensor:
    """The next draft token from logits [1, N] over the draft vocabulary. When sampling, the distribution
    drawn from is recorded (scattered to the full vocabulary) as q for verification."""
    if request.sampling.greedy:
        index = logits.argmax(-1)
    else:
        q = probabilities(logits, request.sampling)
        index = sample(q, request.generator)
        probs[row, k, vocab] = q[0].to(probs.dtype)
    return vocab[index]


class DSparkDrafter(Drafter):
    def __init__(self, model: DSparkModel, name: str | None = None):
        self.model = model.eval()
        self.name = name or model.config.algorithm
        self.block_size = model.config.block_size
        self.feature_layers = tuple(model.config.target_layer_ids)
        #: T_k of sequential temperature scaling, applied to the confidence logits (empty: uncalibrated)
        self.confidence_temperatures = tuple(model.config.confidence_temperatures)
        self.confidence_shifts = tuple(model.config.confidence_shifts)
        self._contexts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._last_states: dict[int, torch.Tensor] = {}  # fused context state of each request's last position
        self._lengths: dict[int, int] = {}

    def _calibrated(self, logit: torch.Tensor, k: int) -> torch.Tensor:
        """logit_k / T_k + b_k (identity where no calibration was fitted)."""
        temperatures, shifts = self.confidence_temperatures, self.confidence_shifts
        return logit / (temperatures[k] if k < len(temperatures) else 1.0) + (shifts[k] if k < len(shifts) else 0.0)

    def begin(self, prompts: list[list[int]]) -> None:
        self._contexts, self._last_states = {}, {}
        self._lengths = {i: 0 for i in range(len(prompts))}

    def end(self) -> None:
        self._contexts, self._last_states = {}, {}

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
        self._last_states[request_id] = fused[:, -1]
        self._lengths[request_id] = start + fused.shape[1]

    @torch.inference_mode()
    def propose(self, request: DraftRequest) -> DraftProposal:
        model = self.model
        device = model.device
        gamma = model.config.block_size
        width, tokens, probs = _empty_block(request, gamma, model.config.vocab_size, device)
        confidences = torch.zeros(len(request.tokens), width, device=device) if model.confidence is not None else None
        for row, (rid, history, limit, features) in enumerate(
            zip(request.request_ids, request.tokens, request.max_lengths, request.new_features)
        ):
            self._extend_context(rid, features)
            limit = min(limit, gamma)
            if limit == 0:
                continue
            anchor_position = len(history) - 1
            if self._lengths[rid] != anchor_position:
                raise RuntimeError(f"draft context has {self._lengths[rid]} positions, expected {anchor_position}")
            anchor = torch.tensor([[history[-1]]], device=device)
            slots = model.config.slots
            block = model.block_inputs(anchor, self._last_states.get(rid))  # [1, 1, slots, d] -> [1, slots, d]
            block = block.reshape(1, slots, -1)
            positions = torch.arange(anchor_position, anchor_position + slots, device=device)[None]
            context = self._contexts.get(rid)
            if context is None:  # no context yet (a one-token prompt)
                empty = block.new_zeros(1, model.config.num_kv_heads, 0, model.config.head_dim)
                context = [(empty, empty)] * len(model.layers)
            h = model.drafting_slots(model.backbone(block, positions, context, None)[0])  # [γ, d]
            base = model.base_logits(h[:limit])  # [ℓ, N]
            prev = anchor[0]
            state = None
            for k in range(limit):
                bias, state = model.head_bias(prev, h[k : k + 1], state)
                logits = base[k : k + 1] if bias is None else base[k : k + 1] + bias
                if confidences is not None:
                    confidences[row, k] = torch.sigmoid(self._calibrated(model.confidence_logit(prev, h[k : k + 1]), k))[0]
                prev = _draw(logits, model.draft_vocab, request, probs, row, k)
                tokens[row, k] = prev[0]
        lengths = torch.tensor([min(m, gamma) for m in request.max_lengths], dtype=torch.long, device=device)
        return DraftProposal(tokens=tokens, lengths=lengths, probs=probs, confidences=confidences)


class Eagle3Drafter(Drafter):
    """Eagle3 as a drafter: a per-request cache of the draft layer's context entries, then γ autoregressive
    steps that feed the draft's own state and the token just drawn."""

    def __init__(self, model: Eagle3Model, name: str | None = None):
        self.model = model.eval()
        self.name = name or "eagle3"
        self.block_size = model.config.block_size
        self.feature_layers = tuple(model.config.target_layer_ids)
        self._cache: dict[int, dict] = {}

    def begin(self, prompts: list[list[int]]) -> None:
        self._cache = {i: {"length": 0, "keys": None, "values": None, "last": None} for i in range(len(prompts))}

    def end(self) -> None:
        self._cache = {}

    def _extend(self, rid: int, history: list[int], features) -> None:
        if features is None or features.layers[0].shape[0] == 0:
            return
        model, entry = self.model, self._cache[rid]
        start, count = entry["length"], features.layers[0].shape[0]
        g = model.fuse_features(torch.cat(features.layers, dim=-1)[None])  # [1, m, d]
        device = g.device
        next_tokens = torch.tensor([history[start + 1 : start + count + 1]], device=device)
        x = model.entry_inputs(next_tokens, g)
        positions = torch.arange(start, start + count, device=device)[None]
        k, v = model.attention.project_kv(x, positions)
        entry["keys"] = k if entry["keys"] is None else torch.cat([entry["keys"], k], dim=2)
        entry["values"] = v if entry["values"] is None else torch.cat([entry["values"], v], dim=2)
        entry["last"] = (x[:, -1:], g[:, -1:])
        entry["length"] = start + count

    @torch.inference_mode()
    def propose(self, request: DraftRequest) -> DraftProposal:
        model = self.model
        device = model.fuse.weight.device
        gamma = model.config.block_size
        width, tokens, probs = _empty_block(request, gamma, model.config.vocab_size, device)
        lengths = []
        for row, (rid, history, limit, features) in enumerate(
            zip(request.request_ids, request.tokens, request.max_lengths, request.new_features)
        ):
            self._extend(rid, history, features)
            entry = self._cache[rid]
            limit = min(limit, gamma) if entry["length"] > 0 else 0  # nothing to draft from without context
            lengths.append(limit)
            if limit == 0:
                continue
            if entry["length"] != len(history) - 1:
                raise RuntimeError(f"draft context has {entry['length']} entries, expected {len(history) - 1}")
            x, state = entry["last"]
            keys, values = entry["keys"], entry["values"]
            position = entry["length"] - 1
            for k in range(limit):
                if k > 0:
                    x = model.entry_inputs(tokens[row : row + 1, k - 1 : k], state)
                    k_new, v_new = model.attention.project_kv(x, torch.tensor([[position + k]], device=device))
                    keys, values = torch.cat([keys, k_new], dim=2), torch.cat([values, v_new], dim=2)
                state = model.step(x, state, torch.tensor([[position + k]], device=device), keys, values, None)
                tokens[row, k] = _draw(model.logits(state)[0], model.draft_vocab, request, probs, row, k)[0]
        return DraftProposal(tokens=tokens, lengths=torch.tensor(lengths, dtype=torch.long, device=device), probs=probs)
