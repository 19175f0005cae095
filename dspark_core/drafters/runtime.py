"""Trained DSpark / DFlash / Eagle3 modules as drafters of the decoding engine (the drafter protocol).

Per request the drafter keeps each draft layer's keys/values of the fused target context, extended with
the features of newly committed positions every round — the context is never recomputed. A round drafts every
active request in one batched pass: the requests' contexts are padded to the longest and the padding masked out
(one request, or requests of equal context, take the unmasked path). DSpark/DFlash run the backbone once over
the block's slots (γ, or γ + 1 when the anchor slot drafts nothing), then sample left to right, adding the
sequential head's bias for the token just drawn (DSpark) or not (DFlash); Eagle3 takes γ steps, each feeding
back the token just drawn.
"""

from __future__ import annotations

from itertools import accumulate

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


def _draw(logits: torch.Tensor, vocab: torch.Tensor, request: DraftRequest, probs, rows: torch.Tensor, k: int,
          live: torch.Tensor) -> torch.Tensor:
    """The next draft token of each row from logits [B, N] over the draft vocabulary (`rows`: their rows of the
    proposal). When sampling, the distribution drawn from is recorded (scattered to the full vocabulary) as q for
    verification, for the rows still drafting (`live`)."""
    if request.sampling.greedy:
        index = logits.argmax(-1)
    else:
        q = probabilities(logits, request.sampling)
        index = sample(q, request.generator)
        probs[rows[live, None], k, vocab[None, :]] = q[live].to(probs.dtype)
    return vocab[index]


def _padded(kv: list[tuple[torch.Tensor, torch.Tensor]], lengths: list[int]):
    """Per-request keys/values [1, kvH, C_r, D] as one batch [B, kvH, max C, D] (zeros after each C_r), and the
    mask of real entries [B, max C]; the mask is None when no request is padded (then attention needs none)."""
    width = max(lengths)
    if len(kv) == 1:  # one request (every round of single-request decoding): its cache as it is, no copy
        return kv[0][0], kv[0][1], None
    if all(length == width for length in lengths):
        return torch.cat([k for k, _ in kv]), torch.cat([v for _, v in kv]), None
    first = kv[0][0]
    keys = first.new_zeros(len(kv), first.shape[1], width, first.shape[3])
    values = torch.zeros_like(keys)
    for row, ((k, v), length) in enumerate(zip(kv, lengths)):
        keys[row, :, :length], values[row, :, :length] = k[0], v[0]
    real = torch.arange(width, device=first.device)[None] < torch.tensor(lengths, device=first.device)[:, None]
    return keys, values, real


def _pending(request_ids: list[int], features: list) -> list[tuple[int, object]]:
    """(request id, features) of the requests with newly committed positions this round."""
    return [(rid, f) for rid, f in zip(request_ids, features) if f is not None and f.layers[0].shape[0] > 0]


def _segments(counts: list[int]) -> list[slice]:
    """Consecutive slices of the given lengths: each request's part of positions packed one after another."""
    return [slice(end - n, end) for end, n in zip(accumulate(counts), counts)]


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

    def _extend_contexts(self, request_ids: list[int], features: list) -> None:
        """Append every request's newly committed positions to its context caches: one fuse and one key/value
        projection per layer for all requests together (both act position by position), then split per request."""
        new = _pending(request_ids, features)
        if not new:
            return
        model = self.model
        fused = model.fuse_context(torch.cat([torch.cat(f.layers, dim=-1) for _, f in new])[None])  # [1, Σm, d]
        counts = [f.layers[0].shape[0] for _, f in new]
        positions = torch.cat([torch.arange(self._lengths[rid], self._lengths[rid] + n, device=fused.device)
                               for (rid, _), n in zip(new, counts)])[None]
        projected = model.context_kv(fused, positions)
        for (rid, _), part in zip(new, _segments(counts)):
            old = self._contexts.get(rid)
            added = [(k[:, :, part], v[:, :, part]) for k, v in projected]
            self._contexts[rid] = added if old is None else [
                (torch.cat([ok, nk], dim=2), torch.cat([ov, nv], dim=2)) for (ok, ov), (nk, nv) in zip(old, added)
            ]
            self._last_states[rid] = fused[:, part.stop - 1]
            self._lengths[rid] += part.stop - part.start

    @torch.inference_mode()
    def propose(self, request: DraftRequest) -> DraftProposal:
        model = self.model
        device = model.device
        gamma = model.config.block_size
        width, tokens, probs = _empty_block(request, gamma, model.config.vocab_size, device)
        confidences = torch.zeros(len(request.tokens), width, device=device) if model.confidence is not None else None
        self._extend_contexts(request.request_ids, request.new_features)
        active = []  # (row, request id, history, limit) of the requests drafting this round
        for row, (rid, history, limit) in enumerate(zip(request.request_ids, request.tokens, request.max_lengths)):
            if min(limit, gamma) > 0:
                if self._lengths[rid] != len(history) - 1:
                    raise RuntimeError(f"draft context has {self._lengths[rid]} positions, expected {len(history) - 1}")
                active.append((row, rid, history, min(limit, gamma)))
        if active:
            self._draft(active, request, tokens, probs, confidences)
        lengths = torch.tensor([min(m, gamma) for m in request.max_lengths], dtype=torch.long, device=device)
        return DraftProposal(tokens=tokens, lengths=lengths, probs=probs, confidences=confidences)

    def _draft(self, active, request: DraftRequest, tokens, probs, confidences) -> None:
        """One batched backbone pass over the blocks of the `active` requests, then the head left to right."""
        model, device = self.model, self.model.device
        slots = model.config.slots
        rows = torch.tensor([row for row, *_ in active], device=device)
        limits = torch.tensor([limit for *_, limit in active], device=device)
        anchors = torch.tensor([history[-1] for _, _, history, _ in active], device=device)
        states = [self._last_states.get(rid) for _, rid, _, _ in active]
        if all(state is not None for state in states):
            blocks = model.block_inputs(anchors, torch.cat(states))  # [B, slots, d]
        else:  # a request without context yet gets no state term
            blocks = torch.cat([model.block_inputs(anchors[i : i + 1], state) for i, state in enumerate(states)])
        starts = torch.tensor([len(history) - 1 for _, _, history, _ in active], device=device)
        positions = starts[:, None] + torch.arange(slots, device=device)[None]
        lengths = [self._lengths[rid] for _, rid, _, _ in active]
        context, real = [], None
        for layer in range(len(model.layers)):
            kv = [self._contexts[rid][layer] if rid in self._contexts else self._no_context() for _, rid, _, _ in active]
            keys, values, real = _padded(kv, lengths)
            context.append((keys, values))
        mask = None if real is None else torch.cat([real, real.new_ones(len(active), slots)], dim=1)[:, None].expand(
            -1, slots, -1)  # [B, slots, C + slots]: each block sees its own context and its whole block
        h = model.drafting_slots(model.backbone(blocks, positions, context, mask))  # [B, γ, d]
        steps = int(limits.max())
        base = model.base_logits(h[:, :steps])  # [B, ℓ, N]
        prev, state = anchors, None
        for k in range(steps):
            live = limits > k
            bias, state = model.head_bias(prev, h[:, k], state)
            logits = base[:, k] if bias is None else base[:, k] + bias
            if confidences is not None:
                confidence = torch.sigmoid(self._calibrated(model.confidence_logit(prev, h[:, k]), k))
                confidences[rows[live], k] = confidence[live].to(confidences.dtype)
            prev = _draw(logits, model.draft_vocab, request, probs, rows, k, live)
            tokens[rows[live], k] = prev[live]

    def _no_context(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-length keys/values: a request with no context yet (a one-token prompt)."""
        config = self.model.config
        empty = torch.zeros(1, config.num_kv_heads, 0, config.head_dim, device=self.model.device,
                            dtype=self.model.fuse.weight.dtype)
        return empty, empty


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

    def _extend(self, request_ids: list[int], histories: list[list[int]], features: list) -> None:
        """Append every request's newly committed positions as context entries (the next token's embedding beside
        the fused features), projected to keys/values for all requests in one pass, then split per request."""
        new = _pending(request_ids, features)
        if not new:
            return
        model = self.model
        g = model.fuse_features(torch.cat([torch.cat(f.layers, dim=-1) for _, f in new])[None])  # [1, Σm, d]
        device = g.device
        counts = [f.layers[0].shape[0] for _, f in new]
        starts = [self._cache[rid]["length"] for rid, _ in new]
        history = dict(zip(request_ids, histories))
        next_tokens = torch.tensor([[token for (rid, _), start, n in zip(new, starts, counts)
                                     for token in history[rid][start + 1 : start + n + 1]]], device=device)
        x = model.entry_inputs(next_tokens, g)
        positions = torch.cat([torch.arange(start, start + n, device=device) for start, n in zip(starts, counts)])[None]
        k, v = model.attention.project_kv(x, positions)
        for (rid, _), part in zip(new, _segments(counts)):
            entry = self._cache[rid]
            k_r, v_r = k[:, :, part], v[:, :, part]
            entry["keys"] = k_r if entry["keys"] is None else torch.cat([entry["keys"], k_r], dim=2)
            entry["values"] = v_r if entry["values"] is None else torch.cat([entry["values"], v_r], dim=2)
            last = slice(part.stop - 1, part.stop)
            entry["last"] = (x[:, last], g[:, last])
            entry["length"] += part.stop - part.start

    @torch.inference_mode()
    def propose(self, request: DraftRequest) -> DraftProposal:
        model = self.model
        device = model.fuse.weight.device
        gamma = model.config.block_size
        width, tokens, probs = _empty_block(request, gamma, model.config.vocab_size, device)
        self._extend(request.request_ids, request.tokens, request.new_features)
        lengths, active = [], []
        for row, (rid, history, limit) in enumerate(zip(request.request_ids, request.tokens, request.max_lengths)):
            entry = self._cache[rid]
            limit = min(limit, gamma) if entry["length"] > 0 else 0  # nothing to draft from without context
            lengths.append(limit)
            if limit == 0:
                continue
            if entry["length"] != len(history) - 1:
                raise RuntimeError(f"draft context has {entry['length']} entries, expected {len(history) - 1}")
            active.append((row, entry, limit))
        if active:
            self._draft(active, request, tokens, probs)
        return DraftProposal(tokens=tokens, lengths=torch.tensor(lengths, dtype=torch.long, device=device), probs=probs)

    def _draft(self, active, request: DraftRequest, tokens, probs) -> None:
        """γ batched steps over the `active` requests' padded context caches, each feeding back the token drawn."""
        model, device = self.model, self.model.fuse.weight.device
        rows = torch.tensor([row for row, _, _ in active], device=device)
        limits = torch.tensor([limit for _, _, limit in active], device=device)
        keys, values, real = _padded([(entry["keys"], entry["values"]) for _, entry, _ in active],
                                     [entry["length"] for _, entry, _ in active])
        x = torch.cat([entry["last"][0] for _, entry, _ in active])  # [B, 1, 2d]
        state = torch.cat([entry["last"][1] for _, entry, _ in active])  # [B, 1, d]
        start = torch.tensor([entry["length"] - 1 for _, entry, _ in active], device=device)[:, None]
        for k in range(int(limits.max())):
            live = limits > k
            if k > 0:  # the token just drawn enters the cache (own keys after the padded context: always real)
                x = model.entry_inputs(tokens[rows, k - 1 : k], state)
                k_new, v_new = model.attention.project_kv(x, start + k)
                keys, values = torch.cat([keys, k_new], dim=2), torch.cat([values, v_new], dim=2)
                real = None if real is None else torch.cat([real, real.new_ones(len(active), 1)], dim=1)
            state = model.step(x, state, start + k, keys, values, None if real is None else real[:, None])
            drawn = _draw(model.logits(state)[:, 0], model.draft_vocab, request, probs, rows, k, live)
            tokens[rows[live], k] = drawn[live]
