"""The drafter protocol: how any draft module plugs into the speculative decoding engine.

Each round the engine hands the drafter, for every active request, its committed tokens (the last one is
the *anchor*: produced by the target but not yet run through it), the most tokens it may propose, and the
target features of positions committed since the previous round. The drafter answers with a padded block
of proposals and the distributions it sampled them from. Verification is lossless for any proposal as
long as `probs` is exactly what the drafter sampled from (None = deterministic point masses).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from dspark_core.decoding.sampling import SamplingConfig
from dspark_core.models.target import TargetFeatures


@dataclass
class DraftRequest:
    """One round's question to the drafter, for the R active requests."""

    request_ids: list[int]  # stable ids (index in the original batch) so drafters can keep per-request state
    tokens: list[list[int]]  # committed tokens of each request; tokens[r][-1] is the anchor
    max_lengths: list[int]  # propose at most this many tokens per request (may be 0)
    new_features: list[TargetFeatures | None]  # target features of positions committed since the last round
    sampling: SamplingConfig
    generator: torch.Generator | None


@dataclass
class DraftProposal:
    tokens: torch.Tensor  # [R, L] long, padded
    lengths: torch.Tensor  # [R] long, lengths[r] <= max_lengths[r]
    probs: torch.Tensor | None = None  # [R, L, V] draft distributions q; None = point masses on `tokens`
    confidences: torch.Tensor | None = None  # [R, L] optional per-position survival estimates

    def trimmed(self) -> "DraftProposal":
        """The proposal cut to its longest length (after lengths were lowered, e.g. by a verification schedule)."""
        width = int(self.lengths.max()) if self.lengths.numel() else 0
        cut = lambda t: None if t is None else t[:, :width]  # noqa: E731
        return DraftProposal(tokens=self.tokens[:, :width], lengths=self.lengths, probs=cut(self.probs),
                             confidences=cut(self.confidences))

    @staticmethod
    def from_lists(proposals: list[list[int]], device: torch.device | str = "cpu") -> "DraftProposal":
        width = max((len(p) for p in proposals), default=0)
        tokens = torch.zeros(len(proposals), width, dtype=torch.long, device=device)
        for row, proposal in enumerate(proposals):
            if proposal:
                tokens[row, : len(proposal)] = torch.tensor(proposal, dtype=torch.long, device=device)
        lengths = torch.tensor([len(p) for p in proposals], dtype=torch.long, device=device)
        return DraftProposal(tokens=tokens, lengths=lengths)


class Drafter(ABC):
    """Base class for draft modules. Subclasses set `name` and implement `propose`."""

    name: str = "drafter"
    #: target decoder layers whose outputs the drafter conditions on (empty: needs no target features)
    feature_layers: tuple[int, ...] = ()
    #: whether the drafter needs the target's pre-LM-head hidden state of committed positions
    needs_last_hidden: bool = False
    #: the block size the drafter was trained for (None: no preference, the caller's setting applies)
    block_size: int | None = None

    def begin(self, prompts: list[list[int]]) -> None:
        """A new batch of requests starts (request id = index in `prompts`). Reset per-request state."""

    @abstractmethod
    def propose(self, request: DraftRequest) -> DraftProposal:
        """Propose up to request.max_lengths[r] tokens after each request's anchor."""

    def end(self) -> None:
        """The batch is done; release per-request state (caches)."""

    @property
    def wants_features(self) -> bool:
        return bool(self.feature_layers) or self.needs_last_hidden
