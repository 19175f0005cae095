"""What every draft module shares: the target's frozen embedding and the draft-vocabulary rows of its LM head.

The shared weights are attached from the target at load time (`attach_target`) and never saved; the draft
vocabulary (token ids, sorted) is a saved buffer.
"""

from __future__ import annotations

import torch
from torch import nn

from dspark_core.errors import DsparkError


class DraftModule(nn.Module):
    def __init__(self, draft_vocab_size: int):
        super().__init__()
        self.register_buffer("draft_vocab", torch.arange(draft_vocab_size), persistent=True)
        self.register_buffer("embed_weight", torch.empty(0), persistent=False)
        self.register_buffer("lm_head_weight", torch.empty(0), persistent=False)

    def forward(self, *args, **kwargs):
        """The training forward (`forward_train`): what DDP and FSDP2 wrap, since they hook `forward`."""
        return self.forward_train(*args, **kwargs)

    def set_draft_vocab(self, token_ids: torch.Tensor) -> None:
        if token_ids.numel() != self.draft_vocab.numel():
            raise ValueError(f"draft vocabulary has {token_ids.numel()} ids, the module expects {self.draft_vocab.numel()}")
        self.draft_vocab.copy_(token_ids.to(self.draft_vocab))
        self._refresh_lm_head()

    def attach_target(self, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor) -> None:
        """Share the target's frozen embedding [V, d] and full LM head [V, d]."""
        self.embed_weight = embed_weight.detach()
        self._full_lm_head = lm_head_weight.detach()
        self._refresh_lm_head()

    def _refresh_lm_head(self) -> None:
        full = getattr(self, "_full_lm_head", None)
        if full is not None:
            self.lm_head_weight = full.to(self.draft_vocab.device)[self.draft_vocab]

    def embed(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.embed_weight[tokens].to(dtype)

    def base_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary through the target's frozen LM head rows."""
        return h @ self.lm_head_weight.to(h.dtype).T


def mask_token_id(target) -> int:
    """The special token whose embedding fills a block's mask slots: the tokenizer's mask token, else its
    unknown-token, padding or end-of-sequence token (speculators convention: a vocabulary token, not a vector)."""
    tokenizer = target.tokenizer
    for name in ("mask_token_id", "unk_token_id", "pad_token_id", "eos_token_id"):
        token = getattr(tokenizer, name, None)
        if isinstance(token, int) and 0 <= token < target.vocab_size:
            return token
    raise DsparkError(f"{target.spec!r} has no mask, unknown, padding or end-of-sequence token to use as the mask "
                      f"token; train with mask_token 'learned'")


def target_dimensions(target) -> dict:
    """The target's attention geometry, which draft layers copy (hidden size, heads, RoPE base, ...)."""
    config = target.config
    rope = getattr(config, "rope_parameters", None) or {}
    return dict(
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        rms_norm_eps=getattr(config, "rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
        vocab_size=target.vocab_size,
    )
