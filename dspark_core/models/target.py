"""A loaded, frozen target model with a feature tap (logits + chosen decoder-layer outputs + pre-LM-head state)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from dspark_core.device import resolve_device, resolve_dtype
from dspark_core.errors import ConfigError, PromptError
from dspark_core.models.architecture import check_supported, decoder_layers
from dspark_core.models.snapshot import Snapshot, resolve_snapshot


@dataclass
class TargetFeatures:
    """One forward pass's outputs, all shaped [batch, seq, ...].

    `layers[i]` is the output of decoder layer `layer_ids[i]` (0-based; i.e. HF `hidden_states[id + 1]`),
    taken *before* the final norm. `last_hidden` is after the final norm: exactly what the LM head sees.
    """

    last_hidden: torch.Tensor
    layer_ids: tuple[int, ...] = ()
    layers: tuple[torch.Tensor, ...] = ()
    logits: torch.Tensor | None = None

    def select(self, index) -> "TargetFeatures":
        """Index every tensor along the leading dims, e.g. `select((row, slice(a, b)))`."""
        return TargetFeatures(
            last_hidden=self.last_hidden[index],
            layer_ids=self.layer_ids,
            layers=tuple(layer[index] for layer in self.layers),
            logits=None if self.logits is None else self.logits[index],
        )


class TargetModel:
    """A frozen causal LM plus its tokenizer and snapshot record. Use `load_target(spec)` to build one."""

    def __init__(self, model: nn.Module, tokenizer, snapshot: Snapshot | None, spec: str):
        check_supported(model, spec)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.snapshot = snapshot
        self.spec = spec
        self.config = model.config.get_text_config()
        self._decoder = model.get_decoder()
        self._layers = decoder_layers(model)
        self._lm_head = model.get_output_embeddings()
        self._softcap = getattr(self.config, "final_logit_softcapping", None)
        self._float_lm_head: tuple[torch.Tensor, torch.Tensor | None] | None = None  # lm_logsumexp's, made once

    # ---- facts -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._lm_head.weight.dtype

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        """Size of the logits (may exceed the tokenizer's vocabulary by padding)."""
        return self._lm_head.weight.shape[0]

    @property
    def max_context(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", None) or 2048)

    @property
    def revision(self) -> str | None:
        return self.snapshot.revision if self.snapshot else None

    @property
    def eos_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if value is None:
                continue
            ids.update(value if isinstance(value, (list, tuple, set)) else [value])
        return frozenset(int(i) for i in ids)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    # ---- text ------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, *, chat: bool = False, system: str | None = None) -> list[int]:
        """Token ids for a prompt; with `chat`, wrapped in the model's chat template as a user turn."""
        if not prompt or not prompt.strip():
            raise PromptError("the prompt is empty; pass some text with --prompt")
        if chat:
            if not self.has_chat_template:
                raise PromptError(f"model {self.spec!r} has no chat template; drop --chat to use the raw prompt")
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(prompt)["input_ids"]
        self.check_prompt_length(len(ids))
        return list(ids)

    def check_prompt_length(self, n_tokens: int, max_new_tokens: int = 1) -> None:
        if n_tokens + max(1, max_new_tokens) > self.max_context:
            if n_tokens < self.max_context and max_new_tokens > 1:
                raise PromptError(
                    f"the prompt ({n_tokens} tokens) plus {max_new_tokens} new tokens exceed the context of "
                    f"{self.spec!r} ({self.max_context} tokens); lower --max-new-tokens to at most "
                    f"{self.max_context - n_tokens} or shorten the prompt"
                )
            raise PromptError(
                f"the prompt is {n_tokens} tokens but {self.spec!r} has a context of {self.max_context} tokens "
                f"(prompt + at least one new token must fit); shorten the prompt"
            )

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def tokenizer_vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()

    # ---- forward ---------------------------------------------------------------------------
    def lm_logits(self, hidden: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from pre-LM-head hidden states with the frozen LM head (and softcapping if the model has it);
        with `tokens`, only those tokens' logits (the LM head's rows for them)."""
        if tokens is None:
            logits = self._lm_head(hidden)
        else:
            bias = self._lm_head.bias
            logits = nn.functional.linear(hidden, self._lm_head.weight[tokens], None if bias is None else bias[tokens])
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def lm_logsumexp(self, hidden: torch.Tensor) -> torch.Tensor:
        """log Σ exp(logits) over the whole vocabulary, in float32 whatever the model's precision: training
        normalizes float32 logits of the draft vocabulary by it, and a bfloat16 logit is off by up to ~0.06."""
        if self._float_lm_head is None:
            weight, bias = self._lm_head.weight, self._lm_head.bias
            self._float_lm_head = (weight.float(), None if bias is None else bias.float())
        logits = nn.functional.linear(hidden.float(), *self._float_lm_head)
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits.logsumexp(-1)

    @contextmanager
    def _tap(self, layer_ids: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
        captured: dict[int, torch.Tensor] = {}
        handles = []
        for layer_id in layer_ids:
            if not 0 <= layer_id < self.num_layers:
                raise ConfigError(f"layer id {layer_id} out of range for {self.spec!r} ({self.num_layers} layers)")

            def hook(_module, _inputs, output, layer_id=layer_id):
                captured[layer_id] = output[0] if isinstance(output, tuple) else output

            handles.append(self._layers[layer_id].register_forward_hook(hook))
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    @torch.inference_mode()
    def forward_features(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        layer_ids: Sequence[int] = (),
        with_logits: bool = True,
    ) -> TargetFeatures:
        """One target pass: pre-LM-head hidden states, chosen decoder-layer outputs and (optionally) logits.

        `cache` (a transformers Cache) is extended in place with the new tokens' keys and values.
        """
        with self._tap(layer_ids) as captured:
            out = self._decoder(
                input_ids=input_ids.to(self.device),
                attention_mask=None if attention_mask is None else attention_mask.to(self.device),
                position_ids=None if position_ids is None else position_ids.to(self.device),
                cache=cache,
                use_cache=cache is not None,
            )
        hidden = out.last_hidden_state
        return TargetFeatures(
            last_hidden=hidden,
            layer_ids=tuple(layer_ids),
            layers=tuple(captured[i] for i in layer_ids),
            logits=self.lm_logits(hidden) if with_logits else None,
        )


def load_target(
    spec: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    refresh: bool = False,
    for_data: bool = False,
) -> TargetModel:
    """Resolve `spec` to its snapshot (importing once) and load it on `device` in `dtype`.

    Defaults: CUDA + bfloat16 when a GPU is present, CPU + float32 otherwise. `for_data` loads it to write
    training data: an "auto" dtype is then `dspark_core.device.data_dtype` (bfloat16 also on CPUs with native
    bfloat16 matrix units).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    snapshot = resolve_snapshot(spec, refresh=refresh)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device, for_data=for_data)
    # A snapshot loads in about a second; transformers' per-tensor progress bar would only be noise.
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(snapshot.path, dtype=resolved_dtype, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(snapshot.path)
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
    return TargetModel(model.to(resolved_device), tokenizer, snapshot, spec.strip())


def load_target_without_weights(spec: str) -> TargetModel:
    """`spec`'s tokenizer, chat template, generation settings, dimensions and revision, with the weights left out
    (on the meta device): what regeneration through a server and a cache's size estimate need of the target on
    this machine. Running it fails."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    snapshot = resolve_snapshot(spec)
    config = AutoConfig.from_pretrained(snapshot.path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    try:
        model.generation_config = GenerationConfig.from_pretrained(snapshot.path)
    except OSError:
        pass  # no generation_config.json: the model's defaults
    return TargetModel(model, AutoTokenizer.from_pretrained(snapshot.path), snapshot, spec.strip())
