"""An independent draft LM: any smaller causal LM with the target's tokenizer, run autoregressively."""

from __future__ import annotations

import torch

from dspark_core.decoding.drafter import DraftProposal, DraftRequest, Drafter
from dspark_core.decoding.kv_cache import BatchedKVCache
from dspark_core.decoding.sampling import probabilities, sample
from dspark_core.errors import VocabularyMismatchError
from dspark_core.models.target import TargetModel


def check_same_vocabulary(target: TargetModel, draft: TargetModel) -> None:
    """Draft token ids must mean the same strings as the target's, and both must score the same id range."""
    if draft.vocab_size != target.vocab_size or draft.tokenizer_vocab() != target.tokenizer_vocab():
        raise VocabularyMismatchError(
            f"drafter {draft.spec!r} has a different vocabulary from target {target.spec!r} "
            f"({len(draft.tokenizer_vocab())} tokens / {draft.vocab_size} logits vs "
            f"{len(target.tokenizer_vocab())} / {target.vocab_size}); use a draft model from the same family "
            f"that shares the target's tokenizer"
        )


class DraftModelDrafter(Drafter):
    """Runs the draft LM over each request's committed tokens with its own batched KV cache, reusing the
    cached prefix that is still valid after verification, then samples up to ℓ tokens one at a time."""

    def __init__(self, draft: TargetModel, target: TargetModel):
        check_same_vocabulary(target, draft)
        self.draft = draft
        self.name = f"draft-lm:{draft.spec}"
        self._kv: BatchedKVCache | None = None
        self._rows: list[int] = []  # request id of each cache row
        self._cached: list[list[int]] = []  # tokens currently in each cache row

    def begin(self, prompts: list[list[int]]) -> None:
        self._kv = BatchedKVCache(self.draft.forward_features, len(prompts), self.draft.device)
        self._rows = list(range(len(prompts)))
        self._cached = [[] for _ in prompts]

    def end(self) -> None:
        self._kv = None
        self._cached = []

    def _follow(self, request_ids: list[int]) -> None:
        """Match the cache rows to the requests the engine runs now: drop finished ones, add admitted ones."""
        if request_ids == self._rows:
            return
        new = [rid for rid in request_ids if rid not in self._rows]
        if new:
            self._kv.add_rows(len(new))
            self._cached += [[] for _ in new]
            self._rows += new
        position = {rid: row for row, rid in enumerate(self._rows)}
        keep = [position[rid] for rid in request_ids]
        self._kv.select_rows(torch.tensor(keep, device=self._kv.device))
        self._cached = [self._cached[row] for row in keep]
        self._rows = list(request_ids)

    @torch.inference_mode()
    def propose(self, request: DraftRequest) -> DraftProposal:
        assert self._kv is not None, "begin() was not called"
        self._follow(request.request_ids)
        device = self._kv.device
        # Keep each row's longest cached prefix that is still committed; the anchor is always re-fed.
        keep = []
        for cached, tokens in zip(self._cached, request.tokens):
            limit = min(len(cached), len(tokens) - 1)
            same = 0
            while same < limit and cached[same] == tokens[same]:
                same += 1
            keep.append(same)
        self._kv.truncate(torch.tensor(keep, device=device))
        pending = [tokens[k:] for tokens, k in zip(request.tokens, keep)]
        block = DraftProposal.from_lists(pending, device=device)

        steps = max(request.max_lengths, default=0)
        rows = len(pending)
        drafted = torch.zeros(rows, steps, dtype=torch.long, device=device)
        draft_probs = None if request.sampling.greedy else []
        last = block.lengths - 1
        feed, counts = block.tokens, block.lengths
        for step in range(steps):
            out = self._kv.extend(feed, counts)
            logits = out.logits[torch.arange(rows, device=device), last]
            if request.sampling.greedy:
                choice = logits.argmax(-1)
            else:
                q = probabilities(logits, request.sampling)
                choice = sample(q, request.generator)
                draft_probs.append(q)
            drafted[:, step] = choice
            # Only rows that still need tokens feed their draft onward; the last draft is never fed.
            feed, last = choice[:, None], torch.zeros(rows, dtype=torch.long, device=device)
            counts = torch.tensor([1 if step + 1 < m else 0 for m in request.max_lengths], device=device)
            if step + 1 == steps:
                break
        lengths = torch.tensor(request.max_lengths, dtype=torch.long, device=device)
        if steps == 0:  # nothing was fed: the cache holds only the kept prefix
            self._cached = [tokens[:k] for tokens, k in zip(request.tokens, keep)]
        else:
            fed = [max(m - 1, 0) for m in request.max_lengths]
            self._cached = [
                tokens[:k] + pend + drafted[r, : fed[r]].tolist()
                for r, (tokens, k, pend) in enumerate(zip(request.tokens, keep, pending))
            ]
        probs = torch.stack(draft_probs, dim=1) if draft_probs else None
        return DraftProposal(tokens=drafted, lengths=lengths, probs=probs)
