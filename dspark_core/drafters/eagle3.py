"""Eagle3: one autoregressive draft layer on fused low/mid/high target features (docs/architecture.md).

Entry i of the draft's sequence combines the target's fused features g_i (which have seen tokens <= i) with
the embedding of token x_{i+1}, and predicts x_{i+2}. Drafting from anchor x_n: the first step is the context
entry n-1; each later step replaces g with the draft's own output state and embeds the token it just drew.
Training-time test unrolls exactly that for γ steps: step s of the chain anchored at a attends to the
context entries <= a-1 and to its own earlier steps, and predicts x_{a+s}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from dspark_core.drafters.base import DraftModule
from dspark_core.drafters.layers import Attention, RMSNorm, SwiGLU
from dspark_core.settings import DEFAULT_BLOCK_SIZE


@dataclass
class Eagle3Config:
    algorithm: str = "eagle3"
    hidden_size: int = 576
    num_heads: int = 9
    num_kv_heads: int = 3
    head_dim: int = 64
    intermediate_size: int = 1536
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    block_size: int = DEFAULT_BLOCK_SIZE  # γ: training-time-test steps, and tokens drafted per round
    target_layer_ids: tuple[int, ...] = (1, 14, 26)  # low, mid, high (the registry picks them from the cache)
    vocab_size: int = 49152
    draft_vocab_size: int = 4096

    def __post_init__(self) -> None:
        self.target_layer_ids = tuple(self.target_layer_ids)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["target_layer_ids"] = list(self.target_layer_ids)
        return data


def low_mid_high(available: tuple[int, ...]) -> tuple[int, ...]:
    """Eagle3 reads a low, a middle and a high layer: the first, middle and last of the available ones."""
    return tuple(sorted({available[0], available[len(available) // 2], available[-1]}))


#: (our tensor-name pattern, the name vLLM's speculators project uses); the first match wins
SPECULATORS_NAMES = (
    (r"^fuse\.weight$", "fc.weight"),
    (r"^embed_norm\.weight$", "layers.0.input_layernorm.weight"),
    (r"^hidden_norm\.weight$", "layers.0.hidden_norm.weight"),
    (r"^attention\.(q|k|v|o)_proj\.weight$", r"layers.0.self_attn.\1_proj.weight"),
    (r"^post_norm\.weight$", "layers.0.post_attention_layernorm.weight"),
    (r"^mlp\.(gate|up|down)\.weight$", r"layers.0.mlp.\1_proj.weight"),
    (r"^final_norm\.weight$", "norm.weight"),
)


class Eagle3Model(DraftModule):
    def __init__(self, config: Eagle3Config):
        super().__init__(config.draft_vocab_size)
        self.config = config
        d = config.hidden_size
        self.fuse = nn.Linear(len(config.target_layer_ids) * d, d, bias=False)
        self.embed_norm = RMSNorm(d, config.rms_norm_eps)
        self.hidden_norm = RMSNorm(d, config.rms_norm_eps)
        self.attention = Attention(d, config.num_heads, config.num_kv_heads, config.head_dim, config.rope_theta,
                                   in_features=2 * d)
        self.post_norm = RMSNorm(d, config.rms_norm_eps)
        self.mlp = SwiGLU(d, config.intermediate_size)
        self.final_norm = RMSNorm(d, config.rms_norm_eps)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)

    @property
    def dtype(self) -> torch.dtype:
        return self.fuse.weight.dtype

    def fuse_features(self, layer_features: torch.Tensor) -> torch.Tensor:
        return self.fuse(layer_features.to(self.dtype))

    def entry_inputs(self, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """[emb(token) ; hidden] normalized: the attention input of an entry."""
        return torch.cat([self.embed_norm(self.embed(tokens, self.dtype)), self.hidden_norm(hidden)], dim=-1)

    def step(self, x: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, keys, values, mask):
        """One layer application for queries x [B, Q, 2d] with residual `hidden` [B, Q, d], attending to
        (keys, values) that already include these queries' own keys. Returns the new residual state."""
        q = self.attention.project_q(x, positions)
        out = hidden + self.attention.attend(q, keys, values, mask)
        return out + self.mlp(self.post_norm(out))

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        return self.base_logits(self.final_norm(state))

    def forward_train(self, layer_features, input_ids, lengths, anchors, *, with_hidden: bool = False):
        """Training-time test for chains anchored at `anchors` [B, A] (each >= 1). Returns logits [B, A, γ, N]
        (step s predicts x_{a+s}) and None (no confidence head); with `with_hidden`, also the final hidden
        states [B, A, γ, d] (what the LM head reads)."""
        batch, length = input_ids.shape
        gamma, count = self.config.block_size, anchors.shape[1]
        device = input_ids.device
        g = self.fuse_features(layer_features)  # [B, T, d]
        next_tokens = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)  # x_{i+1}; the last is unused
        positions = torch.arange(length, device=device).expand(batch, -1)
        x1 = self.entry_inputs(next_tokens, g)
        keys, values = self.attention.project_kv(x1, positions)  # context entries, all positions

        rows = torch.arange(batch, device=device)[:, None]
        chain = anchors - 1  # the context entry each chain starts from
        j = torch.arange(length, device=device)
        context_mask = (j[None, None, :] <= chain[:, :, None]) & (j[None, None, :] < lengths[:, None, None])
        x = x1[rows, chain]  # [B, A, 2d]
        state = g[rows, chain]
        step_positions = chain
        chain_keys, chain_values = [], []
        outputs, hiddens = [], []
        for s in range(gamma):
            if s > 0:
                token = input_ids.gather(1, (anchors + s).clamp_max(length - 1))  # teacher-forced x_{a+s}
                x = self.entry_inputs(token, state)
                step_positions = chain + s
                k_new, v_new = self.attention.project_kv(x, step_positions)
                chain_keys.append(k_new)
                chain_values.append(v_new)
            all_keys = torch.cat([keys, *chain_keys], dim=2)
            all_values = torch.cat([values, *chain_values], dim=2)
            own = torch.eye(count, dtype=torch.bool, device=device).repeat(1, len(chain_keys))
            mask = torch.cat([context_mask, own.expand(batch, -1, -1)], dim=-1)
            state = self.step(x, state, step_positions, all_keys, all_values, mask)
            hiddens.append(self.final_norm(state))
            outputs.append(self.base_logits(hiddens[-1]))
        logits = torch.stack(outputs, dim=2)
        return (logits, None, torch.stack(hiddens, dim=2)) if with_hidden else (logits, None)
