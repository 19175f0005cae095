"""The training objective (docs/architecture.md, "Training objective") and the analytic acceptance it implies.

L = α_ce·L_ce + α_tv·L_tv + α_conf·L_conf + α_feat·L_feat over the supervised block positions, each position
weighted by w_k = exp(-(k-1)/g). L_ce is to the data's next token, or (`ce_target="distribution"`) a soft
cross-entropy to the target's distribution. The draft distribution lives on the draft vocabulary (zero elsewhere), so the L1
distance to the target's full distribution adds the target's mass outside the draft vocabulary.
Inputs are flattened over supervised positions: M rows, each with its block position k (0-based).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dspark_core.settings import check_settings, setting


@dataclass(frozen=True)
class LossWeights:
    ce: float = setting(0.1, "α_ce: weight of the cross-entropy to the target's token", min=0)
    tv: float = setting(0.9, "α_tv: weight of the L1 distance to the target's distribution", min=0)
    conf: float = setting(1.0, "α_conf: weight of the confidence head's loss", min=0)
    decay: float = setting(4.0, "g in the position weights exp(-(k-1)/g)", above=0)
    feature: float = setting(1.0, "α_feat: weight of the regression of the draft's final hidden state onto the "
                                  "target's (smooth L1; a dense signal that EAGLE trains with)", min=0)
    ce_target: str = setting("token", "What the cross-entropy is to: 'token', the data's next token; 'distribution', "
                                      "the target's next-token distribution (soft cross-entropy, as the reference "
                                      "trains Eagle3)", choices=("token", "distribution"))

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class LossTerms:
    total: torch.Tensor
    ce: torch.Tensor
    tv: torch.Tensor
    conf: torch.Tensor
    feature: torch.Tensor
    acceptance: torch.Tensor  # [γ] mean per-step acceptance 1 - ½‖p_d − p_t‖₁ at each block position
    counts: torch.Tensor  # [γ] supervised rows per block position

    def expected_tau(self) -> float:
        """1 + Σ_k Π_{i≤k} α_k: the accepted length the per-position acceptances imply (bonus included)."""
        survival, tau = 1.0, 1.0
        for alpha, n in zip(self.acceptance.tolist(), self.counts.tolist()):
            if n == 0:
                break
            survival *= alpha
            tau += survival
        return tau

    def packed(self) -> torch.Tensor:
        """The terms as one float64 vector [total, ce, tv, conf, feature, acceptance sums (γ), counts (γ)]: parts of
        a step (micro-batches, ranks) whose terms share the step's normalizers add up to the step's."""
        head = torch.stack([t.detach().double().cpu() for t in (self.total, self.ce, self.tv, self.conf, self.feature)])
        counts = self.counts.double()
        return torch.cat([head, self.acceptance.double() * counts, counts])

    @staticmethod
    def unpacked(values: torch.Tensor) -> "LossTerms":
        gamma = (values.numel() - 5) // 2
        sums, counts = values[5:5 + gamma], values[5 + gamma:]
        return LossTerms(total=values[0].float(), ce=values[1].float(), tv=values[2].float(), conf=values[3].float(),
                         feature=values[4].float(), acceptance=(sums / counts.clamp_min(1)).float(),
                         counts=counts.round().long())

    def scalars(self) -> dict[str, float]:
        out = {"loss": float(self.total.detach()), "loss_ce": float(self.ce), "loss_tv": float(self.tv),
               "loss_conf": float(self.conf), "loss_feature": float(self.feature), "expected_tau": self.expected_tau()}
        out.update({f"accept_{k + 1}": float(a) for k, a in enumerate(self.acceptance.tolist())})
        return out


@dataclass
class TargetDistribution:
    """The target's next-token distribution seen from the draft vocabulary: the probabilities of the draft
    vocabulary's tokens, and the mass outside it."""

    draft_probs: torch.Tensor  # [M, N]
    outside: torch.Tensor  # [M]

    @staticmethod
    def from_logits(target_logits: torch.Tensor, draft_vocab: torch.Tensor) -> "TargetDistribution":
        """From logits over the full vocabulary [M, V]."""
        p_full = target_logits.float().softmax(-1)
        draft_probs = p_full[:, draft_vocab]
        return TargetDistribution(draft_probs, (1.0 - draft_probs.sum(-1)).clamp_min(0.0))

    @staticmethod
    def from_draft_logits(draft_vocab_logits: torch.Tensor, lse: torch.Tensor) -> "TargetDistribution":
        """From the logits of the draft vocabulary's tokens [M, N] and the log-sum-exp over the whole
        vocabulary [M] (exact, without the rest of the LM head)."""
        draft_probs = (draft_vocab_logits.float() - lse.float()[:, None]).exp()
        return TargetDistribution(draft_probs, (1.0 - draft_probs.sum(-1)).clamp_min(0.0))

    def index(self, rows: torch.Tensor) -> "TargetDistribution":
        return TargetDistribution(self.draft_probs[rows], self.outside[rows])


def position_weights(positions: torch.Tensor, decay: float) -> torch.Tensor:
    """w_k = exp(-(k-1)/g) for each row's block position (0-based here)."""
    return torch.exp(-positions.float() / decay)


def draft_vocab_index(targets: torch.Tensor, draft_vocab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each target token's index in the (ascending) draft vocabulary, clamped, and whether it is there at all."""
    index = torch.searchsorted(draft_vocab, targets).clamp_max(draft_vocab.numel() - 1)
    return index, draft_vocab[index] == targets


@dataclass
class LossNormalizers:
    """The denominators of the loss terms' weighted means: Σ w over the supervised rows (TV, confidence and
    feature terms) and Σ w over those whose token is in the draft vocabulary (cross-entropy). They depend on
    the data only, so a step split into micro-batches and ranks can add them up before any forward pass and
    train on exactly the mean over its whole batch."""

    weight: torch.Tensor  # scalar
    ce_weight: torch.Tensor  # scalar

    @staticmethod
    def of(positions: torch.Tensor, targets: torch.Tensor, draft_vocab: torch.Tensor, decay: float) -> "LossNormalizers":
        w = position_weights(positions, decay)
        in_vocab = draft_vocab_index(targets, draft_vocab)[1]
        return LossNormalizers(w.sum().clamp_min(1e-8), (w * in_vocab.float()).sum().clamp_min(1e-8))

    def to_tensor(self) -> torch.Tensor:
        return torch.stack([self.weight, self.ce_weight]).float()

    @staticmethod
    def from_tensor(values: torch.Tensor) -> "LossNormalizers":
        return LossNormalizers(values[0].clamp_min(1e-8), values[1].clamp_min(1e-8))


def draft_losses(
    draft_logits: torch.Tensor,  # [M, N] over the draft vocabulary
    target_logits: torch.Tensor | TargetDistribution,  # [M, V] over the full vocabulary, or already reduced
    targets: torch.Tensor,  # [M] gold token ids (full vocabulary)
    positions: torch.Tensor,  # [M] block position k, 0-based
    draft_vocab: torch.Tensor,  # [N] token ids
    gamma: int,
    weights: LossWeights,
    confidence_logits: torch.Tensor | None = None,  # [M]
    draft_hidden: torch.Tensor | None = None,  # [M, d] what the draft's LM head reads
    target_hidden: torch.Tensor | None = None,  # [M, d] what the target's LM head read at the same position
    normalizers: LossNormalizers | None = None,
) -> LossTerms:
    """The loss terms of M supervised rows. Each term is a weighted sum divided by `normalizers` (by default
    these rows' own): given the normalizers of a whole step's batch, the terms of its parts (micro-batches,
    ranks) add up to the terms of the whole."""
    w = position_weights(positions, weights.decay)
    norm = normalizers or LossNormalizers.of(positions, targets, draft_vocab, weights.decay)
    q = draft_logits.float().softmax(-1)
    target = target_logits if isinstance(target_logits, TargetDistribution) else \
        TargetDistribution.from_logits(target_logits, draft_vocab)
    l1 = (q - target.draft_probs).abs().sum(-1) + target.outside
    tv = (l1 * w).sum() / norm.weight

    log_q = draft_logits.float().log_softmax(-1)
    if weights.ce_target == "distribution":
        # soft cross-entropy -Σ p_t log q over the draft vocabulary (the target's mass outside it has no q to meet)
        soft = -(target.draft_probs * log_q).sum(-1)
        ce = (soft * w).sum() / norm.weight
    else:  # to the gold token, where the draft vocabulary contains it
        index, in_vocab = draft_vocab_index(targets, draft_vocab)
        nll = -log_q.gather(-1, index[:, None])[:, 0]
        ce = (nll * w * in_vocab.float()).sum() / norm.ce_weight

    accept = (1.0 - 0.5 * l1).detach()
    if confidence_logits is not None:
        bce = F.binary_cross_entropy_with_logits(confidence_logits.float(), accept, reduction="none")
        conf = (bce * w).sum() / norm.weight
    else:
        conf = torch.zeros((), device=draft_logits.device)
    if draft_hidden is not None and target_hidden is not None:
        regression = F.smooth_l1_loss(draft_hidden.float(), target_hidden.float(), reduction="none").mean(-1)
        feature = (regression * w).sum() / norm.weight
    else:
        feature = torch.zeros((), device=draft_logits.device)
    total = weights.ce * ce + weights.tv * tv + weights.conf * conf + weights.feature * feature

    counts = torch.bincount(positions, minlength=gamma)[:gamma]
    sums = torch.zeros(gamma, device=accept.device).index_add_(0, positions, accept)
    acceptance = sums / counts.clamp_min(1)
    return LossTerms(total=total, ce=ce.detach(), tv=tv.detach(), conf=conf.detach(), feature=feature.detach(),
                     acceptance=acceptance.cpu(),
                     counts=counts.cpu())
