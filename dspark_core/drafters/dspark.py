"""DSpark and DFlash draft modules: a parallel backbone over a block, plus (DSpark) a sequential head and a
confidence head (docs/architecture.md, "Draft modules"). DFlash is the same backbone with `head="none"`.

The target's embedding and LM head are shared and frozen: they are attached from the target at load time
(`attach_target`) and never stored in the draft checkpoint. The LM head is restricted to a *draft
vocabulary* (the most frequent tokens of the training data), which makes drafting cheap; verification stays
lossless because the proposal distribution q is exactly what was sampled from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from dspark_core.drafters.base import DraftModule
from dspark_core.drafters.heads import HEADS
from dspark_core.drafters.layers import Attention, RMSNorm, SwiGLU
from dspark_core.errors import ConfigError
from dspark_core.models.architecture import decoder_layers
from dspark_core.settings import DEFAULT_BLOCK_SIZE


@dataclass
class DSparkConfig:
    """Everything needed to rebuild the module; stored in the checkpoint's config.json."""

    algorithm: str = "dspark"  # "dspark" | "dflash"
    hidden_size: int = 576
    num_layers: int = 2
    num_heads: int = 9
    num_kv_heads: int = 3
    head_dim: int = 64
    intermediate_size: int = 1536
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    block_size: int = DEFAULT_BLOCK_SIZE  # γ: block positions, each predicting one token after the anchor
    target_layer_ids: tuple[int, ...] = (1, 8, 14, 20, 27)
    vocab_size: int = 49152  # the target's
    draft_vocab_size: int = 4096
    head: str = "markov"  # "markov" | "gated" | "rnn" | "none" (DFlash)
    head_rank: int = 256
    #: rows of the head's previous-token embedding W_1: "draft" = one per draft-vocabulary token plus one shared
    #: by every other token (drafted tokens are always in the draft vocabulary; only an anchor can be outside),
    #: "full" = one per target token (12.6M parameters for SmolLM2 at r = 256, ~28% of a CPU training step)
    head_vocab: str = "draft"
    confidence: bool = True
    #: T_1..T_γ of sequential temperature scaling (c_k = σ(logit_k / T_k)); empty until calibrated
    confidence_temperatures: tuple[float, ...] = ()
    #: b_1..b_γ of the affine calibration (c_k = σ(logit_k / T_k + b_k)); empty: no shift
    confidence_shifts: tuple[float, ...] = ()
    #: what fills the block slots after the anchor: "learned" = a trained mask vector, "vocab" = the target's
    #: (frozen) embedding of `mask_token_id`, as vLLM's speculators DFlash/DSpark drafts do
    mask_token: str = "learned"
    mask_token_id: int | None = None
    #: RMSNorm over each head's queries and keys before RoPE (a Qwen3-style layer, as speculators' drafts have)
    qk_norm: bool = False
    #: add a projection of the fused target state of the position before the anchor (the last one the target
    #: has computed) to every block slot's input, the way Eagle3 feeds that state beside the token; without
    #: it the block reaches that state only through attention. Not expressible in the speculators format.
    anchor_state: bool = False
    #: True: the block is the anchor and γ-1 mask slots, and slot k predicts the token after its own position (the
    #: anchor slot drafts the first token). False: the anchor and γ mask slots, mask slot k predicts the token at
    #: its own position and the anchor slot drafts nothing: the layout vLLM's `dflash` serves
    sample_from_anchor: bool = True

    def __post_init__(self) -> None:
        self.target_layer_ids = tuple(self.target_layer_ids)
        self.confidence_temperatures = tuple(float(t) for t in self.confidence_temperatures)
        self.confidence_shifts = tuple(float(b) for b in self.confidence_shifts)
        if any(not t > 0 for t in self.confidence_temperatures):
            raise ValueError(f"confidence temperatures must be > 0, got {self.confidence_temperatures}")
        if self.head != "none" and self.head not in HEADS:
            raise ValueError(f"head must be one of {sorted(HEADS)} or 'none', got {self.head!r}")
        if self.head_vocab not in ("draft", "full"):
            raise ValueError(f"head_vocab must be 'draft' or 'full', got {self.head_vocab!r}")
        if self.mask_token not in ("learned", "vocab"):
            raise ValueError(f"mask_token must be 'learned' or 'vocab', got {self.mask_token!r}")
        if self.mask_token == "vocab" and not (self.mask_token_id is not None and 0 <= self.mask_token_id < self.vocab_size):
            raise ValueError(f"mask_token 'vocab' needs a mask_token_id in [0, {self.vocab_size}), got {self.mask_token_id!r}")
        if self.confidence and self.head == "none":
            raise ValueError("the confidence head reads the sequential head's token embedding: it needs a head")

    @property
    def slots(self) -> int:
        """Block slots the backbone runs over: γ, or γ + 1 when the anchor slot drafts nothing."""
        return self.block_size if self.sample_from_anchor else self.block_size + 1

    def to_dict(self) -> dict:
        data = asdict(self)
        data["target_layer_ids"] = list(self.target_layer_ids)
        data["confidence_temperatures"] = list(self.confidence_temperatures)
        data["confidence_shifts"] = list(self.confidence_shifts)
        return data


class DraftLayer(nn.Module):
    """A decoder layer whose keys/values are [context ; block] and whose queries are the block's."""

    def __init__(self, config: DSparkConfig):
        super().__init__()
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = Attention(config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim,
                                   config.rope_theta, qk_norm=config.qk_norm, eps=config.rms_norm_eps)
        self.post_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, h, positions, context_kv, mask):
        """h [B, Q, d] block states; context_kv = (k, v) [B, kvH, C, D] already projected; mask [B, Q, C+Q]."""
        x = self.input_norm(h)
        q = self.attention.project_q(x, positions)
        k_block, v_block = self.attention.project_kv(x, positions)
        k = torch.cat([context_kv[0], k_block], dim=2)
        v = torch.cat([context_kv[1], v_block], dim=2)
        h = h + self.attention.attend(q, k, v, mask)
        return h + self.mlp(self.post_norm(h))


class DSparkModel(DraftModule):
    def __init__(self, config: DSparkConfig):
        super().__init__(config.draft_vocab_size)
        self.config = config
        d, m = config.hidden_size, len(config.target_layer_ids)
        self.fuse = nn.Linear(m * d, d, bias=False)  # W_c
        self.fuse_norm = RMSNorm(d, config.rms_norm_eps)
        self.mask_embedding = nn.Parameter(torch.zeros(d)) if config.mask_token == "learned" else None
        self.anchor_state = nn.Linear(d, d, bias=False) if config.anchor_state else None
        self.layers = nn.ModuleList(DraftLayer(config) for _ in range(config.num_layers))
        self.final_norm = RMSNorm(d, config.rms_norm_eps)
        head_rows = config.draft_vocab_size + 1 if config.head_vocab == "draft" else config.vocab_size
        self.head = None if config.head == "none" else HEADS[config.head](
            head_rows, config.draft_vocab_size, d, config.head_rank)
        self.confidence = nn.Linear(d + config.head_rank, 1) if config.confidence else None
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not getattr(self.head, "out", None):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.mask_embedding is not None:
            nn.init.normal_(self.mask_embedding, std=0.02)
        if self.anchor_state is not None:
            nn.init.zeros_(self.anchor_state.weight)  # starts as the module without it

    @property
    def device(self) -> torch.device:
        return self.fuse.weight.device

    # ---- pieces -------------------------------------------------------------------------------
    def fuse_context(self, layer_features: torch.Tensor) -> torch.Tensor:
        """Concatenated target layer outputs [..., m*d] -> H_ctx [..., d]."""
        return self.fuse_norm(self.fuse(layer_features.to(self.fuse.weight.dtype)))

    def context_kv(self, context: torch.Tensor, positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys/values of the fused context H_ctx [B, C, d] (computed once, cacheable)."""
        return [layer.attention.project_kv(context, positions) for layer in self.layers]

    def block_inputs(self, anchors: torch.Tensor, last_state: torch.Tensor | None = None) -> torch.Tensor:
        """[..., slots, d]: the anchor's embedding, then mask embeddings; with `anchor_state`, each slot plus the
        projected fused context state before the anchor, `last_state` [..., d] (None: no context yet)."""
        dtype = self.fuse.weight.dtype
        anchor = self.embed(anchors, dtype)
        if self.mask_embedding is not None:
            mask = self.mask_embedding
        else:
            mask = self.embed(torch.tensor(self.config.mask_token_id, device=anchors.device), dtype)
        masks = mask.expand(*anchors.shape, self.config.slots - 1, -1)
        block = torch.cat([anchor[..., None, :], masks], dim=-2)
        if self.anchor_state is not None and last_state is not None:
            block = block + self.anchor_state(last_state.to(dtype))[..., None, :]
        return block

    def backbone(self, block: torch.Tensor, positions: torch.Tensor, context_kv, mask) -> torch.Tensor:
        h = block
        for layer, kv in zip(self.layers, context_kv):
            h = layer(h, positions, kv, mask)
        return self.final_norm(h)

    def drafting_slots(self, h: torch.Tensor) -> torch.Tensor:
        """[..., slots, d] -> [..., γ, d]: the states of the slots that draft, position k predicting the token at
        anchor + k + 1 (without the anchor slot when it drafts nothing)."""
        return h if self.config.sample_from_anchor else h[..., 1:, :]

    def head_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        """Target token ids -> rows of the head's W_1 (see `DSparkConfig.head_vocab`)."""
        if self.config.head_vocab == "full":
            return tokens
        vocab, n = self.draft_vocab, self.draft_vocab.numel()  # sorted ascending
        index = torch.searchsorted(vocab, tokens).clamp_max(n - 1)
        return torch.where(vocab[index] == tokens, index, n)

    def head_bias(self, prev: torch.Tensor, h: torch.Tensor, state=None):
        if self.head is None:
            return None, state
        return self.head.bias(self.head_rows(prev), h, state)

    def confidence_logit(self, prev: torch.Tensor, h: torch.Tensor) -> torch.Tensor | None:
        if self.confidence is None:
            return None
        return self.confidence(torch.cat([h, self.head.embed(self.head_rows(prev))], dim=-1)).squeeze(-1)

    # ---- training forward -----------------------------------------------------------------
    def forward_train(self, layer_features, input_ids, lengths, anchors, *, with_hidden: bool = False):
        """Teacher-forced draft logits for many anchors per sequence.

        layer_features [B, T, m*d], input_ids [B, T], lengths [B], anchors [B, A] (positions with a+1 < length).
        Returns logits [B, A, γ, N] and confidence logits [B, A, γ] (or None). Block a sees context positions
        < anchors[a] and its own slots (bidirectionally); draft position k's previous token is the gold token at
        anchor + k - 1 (the anchor itself for k = 1). With `with_hidden`, also the final hidden states [B, A, γ, d]
        (what the LM head reads).
        """
        batch, length = input_ids.shape
        gamma, slots, anchors_per_seq = self.config.block_size, self.config.slots, anchors.shape[1]
        device = input_ids.device
        context = self.fuse_context(layer_features)
        ctx_positions = torch.arange(length, device=device).expand(batch, -1)
        context_kv = self.context_kv(context, ctx_positions)

        anchor_tokens = input_ids.gather(1, anchors)
        last_state = None
        if self.anchor_state is not None:  # real anchors are >= 1; the clamp only covers padding anchors (0)
            last_state = context.gather(1, (anchors - 1).clamp_min(0)[..., None].expand(-1, -1, context.shape[-1]))
        block = self.block_inputs(anchor_tokens, last_state).reshape(batch, anchors_per_seq * slots, -1)
        positions = (anchors[:, :, None] + torch.arange(slots, device=device)).reshape(batch, -1)
        mask = block_attention_mask(anchors, lengths, length, slots)
        h = self.backbone(block, positions, context_kv, mask).view(batch, anchors_per_seq, slots, -1)
        h = self.drafting_slots(h)
        offsets = torch.arange(gamma, device=device)

        logits = self.base_logits(h)
        prev_positions = (anchors[:, :, None] + offsets).clamp_max(length - 1)
        prev = input_ids.gather(1, prev_positions.reshape(batch, -1)).view(batch, anchors_per_seq, gamma)
        confidence = None
        if self.head is not None:
            embedded = self.head.embed(self.head_rows(prev))  # one lookup for the whole block (one gradient of W_1)
            logits = logits + self.head.block_bias(embedded, h)
            if self.confidence is not None:
                confidence = self.confidence(torch.cat([h, embedded], dim=-1)).squeeze(-1)
        return (logits, confidence, h) if with_hidden else (logits, confidence)


#: our layer's parameters <- the names of a Llama-style decoder layer's (copied by `init_from_target`)
_TARGET_LAYER_NAMES = {
    "input_norm.weight": "input_layernorm.weight",
    "attention.q_proj.weight": "self_attn.q_proj.weight",
    "attention.k_proj.weight": "self_attn.k_proj.weight",
    "attention.v_proj.weight": "self_attn.v_proj.weight",
    "attention.o_proj.weight": "self_attn.o_proj.weight",
    "post_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}


@torch.no_grad()
def init_from_target(model: DSparkModel, target) -> None:
    """Start from the target's own top layers instead of random weights: draft layer i becomes a copy of target
    layer L - n + i (n draft layers), the final norm the target's, and the context fusion selects the
    highest tapped layer, normalized as the first copied layer normalizes its input. The draft then starts
    out reading the target's hidden space with the target's own attention and MLP."""
    layers = decoder_layers(target.model)
    first = len(layers) - len(model.layers)
    for i, draft_layer in enumerate(model.layers):
        source = dict(layers[first + i].named_parameters())
        ours = dict(draft_layer.named_parameters())
        if set(source) != set(_TARGET_LAYER_NAMES.values()) or any(
                ours[a].shape != source[b].shape for a, b in _TARGET_LAYER_NAMES.items()):
            raise ConfigError(f"{target.spec!r} has decoder layers of another structure ({type(layers[0]).__name__}); "
                              f"initialising draft layers from them needs a Llama-style layer; use init 'random'")
        for ours_name, theirs in _TARGET_LAYER_NAMES.items():
            ours[ours_name].copy_(source[theirs].to(ours[ours_name].dtype))
    final_norm = getattr(target.model.get_decoder(), "norm", None)
    if final_norm is not None:
        model.final_norm.weight.copy_(final_norm.weight.to(model.final_norm.weight.dtype))
    d = model.config.hidden_size
    model.fuse.weight.zero_()
    model.fuse.weight[:, -d:] = torch.eye(d, dtype=model.fuse.weight.dtype)  # the highest tapped layer
    model.fuse_norm.weight.copy_(model.layers[0].input_norm.weight)


#: (our tensor-name pattern, the name vLLM's speculators project uses); the first match wins
SPECULATORS_NAMES = (
    (r"^fuse\.weight$", "fc.weight"),
    (r"^fuse_norm\.weight$", "hidden_norm.weight"),
    (r"^final_norm\.weight$", "norm.weight"),
    (r"^layers\.(\d+)\.input_norm\.weight$", r"layers.\1.input_layernorm.weight"),
    (r"^layers\.(\d+)\.post_norm\.weight$", r"layers.\1.post_attention_layernorm.weight"),
    (r"^layers\.(\d+)\.attention\.(q|k|v|o)_proj\.weight$", r"layers.\1.self_attn.\2_proj.weight"),
    (r"^layers\.(\d+)\.attention\.(q|k)_norm\.weight$", r"layers.\1.self_attn.\2_norm.weight"),
    (r"^layers\.(\d+)\.mlp\.(gate|up|down)\.weight$", r"layers.\1.mlp.\2_proj.weight"),
    (r"^head\.embed\.weight$", "markov_head.markov_w1.weight"),
    (r"^head\.out\.weight$", "markov_head.markov_w2.weight"),
    (r"^head\.gate\.(weight|bias)$", r"markov_head.gate_proj.\1"),
    (r"^head\.cell\.(weight|bias)$", r"markov_head.joint_proj.\1"),
    (r"^confidence\.(weight|bias)$", r"confidence_head.proj.\1"),
)


def block_attention_mask(anchors: torch.Tensor, lengths: torch.Tensor, context_length: int, gamma: int) -> torch.Tensor:
    """Bool [B, A*γ, T + A*γ]: block a attends to context positions j < anchor_a (and < length) and to all γ
    slots of its own block; never to a later context position or another block."""
    batch, count = anchors.shape
    device = anchors.device
    j = torch.arange(context_length, device=device)
    ctx = (j[None, None, :] < anchors[:, :, None]) & (j[None, None, :] < lengths[:, None, None])  # [B, A, T]
    ctx = ctx[:, :, None, :].expand(-1, -1, gamma, -1).reshape(batch, count * gamma, context_length)
    block_id = torch.arange(count, device=device).repeat_interleave(gamma)
    own = (block_id[:, None] == block_id[None, :]).expand(batch, -1, -1)
    return torch.cat([ctx, own], dim=-1)


