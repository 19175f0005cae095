"""Target features computed while training, instead of read from a feature cache.

A cache holds (layers + 1) x hidden size values per token: an 8B target with 5 feature layers stores about
40 KB per token in bfloat16, 40 GB per million tokens. `OnlineFeatures` runs the frozen target over each
training batch instead and hands the trainer what `FeatureCache.batch` would have: the same layers, rounded to
the same storage precision, zero past each sequence's end, and the same float32 log-normalizer of the target's
logits. The draft trains on the same numbers; the price is one target forward pass per micro-batch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dspark_core.data.chat import tokenize_conversations
from dspark_core.data.feature_cache import _DTYPES, CacheBatch, CacheConfig, tokenizer_hash
from dspark_core.data.regenerate import read_responses
from dspark_core.errors import DsparkError
from dspark_core.models.target import TargetModel

#: rows of the LM head's log-sum-exp computed at once (a [rows, vocabulary] float32 temporary)
LSE_ROWS = 1024


class OnlineMemoryError(DsparkError):
    """The target's forward pass over a micro-batch does not fit in the device's memory."""


@dataclass
class TokenSample:
    """A training sequence without features: what vocabulary selection and coverage read."""

    id: str
    split: str
    input_ids: torch.Tensor  # [T] long
    loss_mask: torch.Tensor  # [T] bool


class OnlineFeatures:
    """The reading side of a feature cache (`len`, indexing, `batch`, `manifest`, `layer_ids`, `path`) backed by
    the target itself. `path` is the responses directory the sequences come from."""

    def __init__(self, target: TargetModel, samples: list[dict], config: CacheConfig, *, source: Path,
                 split: str | None = None):
        self.target = target
        self.config = replace(config, layer_ids=config.layers_for(target.num_layers))
        self.layer_ids = self.config.layer_ids
        self.hidden_size = target.hidden_size
        self.path = Path(source)
        self.storage_dtype = _DTYPES[self.config.dtype]
        self._samples = [s for s in samples if split is None or s["split"] == split]
        self.manifest = {
            "mode": "online",
            "target": target.spec,
            "target_revision": target.revision,
            "tokenizer_hash": tokenizer_hash(target.tokenizer),
            "layer_ids": list(self.layer_ids),
            "dtype": self.config.dtype,
            "max_length": self.config.max_length,
            # as a cache of the same sequences would record it (run directories are keyed by it)
            "samples_hash": hashlib.sha256("".join(s["id"] for s in samples).encode()).hexdigest(),
        }

    @classmethod
    def from_responses(cls, target: TargetModel, responses: Path, config: CacheConfig,
                       split: str | None = None) -> "OnlineFeatures":
        """The regenerated conversations in `responses`, tokenized as a cache build would tokenize them."""
        _, conversations = read_responses(Path(responses))
        samples = tokenize_conversations(target, conversations, config.max_length)
        if not samples:
            raise DsparkError(f"no conversation in {responses} has assistant tokens to learn from: the dataset is empty")
        return cls(target, samples, config, source=responses, split=split)

    def split(self, split: str) -> "OnlineFeatures":
        """The same sequences restricted to one split (the training and validation views of one dataset)."""
        view = object.__new__(OnlineFeatures)
        view.__dict__.update(self.__dict__)
        view._samples = [s for s in self._samples if s["split"] == split]
        return view

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> TokenSample:
        sample = self._samples[index]
        return TokenSample(sample["id"], sample["split"], torch.tensor(sample["ids"], dtype=torch.long),
                           torch.tensor(sample["mask"], dtype=torch.bool))

    def batch(self, indices: list[int], *, max_length: int, layer_ids: tuple[int, ...], device, dtype) -> CacheBatch:
        """Samples `indices`, cut to `max_length` and padded on the right, with the target's features of
        `layer_ids` computed now (as `FeatureCache.batch` returns them from disk)."""
        missing = [i for i in layer_ids if i not in self.layer_ids]
        if missing:
            raise DsparkError(f"layers {missing} are not among the online feature layers {list(self.layer_ids)}")
        samples = [self._samples[i] for i in indices]
        length = min(max_length, max(len(s["ids"]) for s in samples))
        ids = torch.zeros(len(samples), length, dtype=torch.long)
        mask = torch.zeros(len(samples), length, dtype=torch.bool)
        lengths = torch.zeros(len(samples), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = min(length, len(sample["ids"]))
            ids[row, :n] = torch.tensor(sample["ids"][:n])
            mask[row, :n] = torch.tensor(sample["mask"][:n], dtype=torch.bool)
            lengths[row] = n
        inside = (torch.arange(length)[None, :] < lengths[:, None]).to(self.target.device)
        try:
            layers, hidden, lse = self._features(ids, inside, layer_ids)
        except torch.OutOfMemoryError as exc:
            raise OnlineMemoryError(
                f"the target's forward pass over {len(samples)} sequences x {length} tokens ran out of memory on "
                f"{self.target.device} ({str(exc).splitlines()[0]}); lower --micro-batch (gradients still add up to "
                f"the same global batch) or --max-length, or train from a feature cache (`dspark data cache`)") from None
        # clones outside inference mode: tensors the draft's autograd may save
        return CacheBatch(ids.to(device), mask.to(device), layers.to(device, dtype).clone(),
                          hidden.to(device, dtype).clone(), lengths.to(device), lse.to(device).clone())

    @torch.inference_mode()
    def _features(self, ids: torch.Tensor, inside: torch.Tensor, layer_ids: tuple[int, ...]):
        features = self.target.forward_features(ids, attention_mask=inside.long(), layer_ids=layer_ids,
                                                with_logits=False)
        keep = inside[..., None]
        # rounded to the storage precision, as a cache holds them, and zero past the end, as a cache pads
        layers = torch.cat(features.layers, dim=-1).to(self.storage_dtype) * keep
        hidden = features.last_hidden.to(self.storage_dtype) * keep
        flat = hidden.reshape(-1, hidden.shape[-1])
        lse = torch.cat([self.target.lm_logsumexp(chunk) for chunk in flat.split(LSE_ROWS)]).view(inside.shape)
        return layers, hidden, lse * inside


def online_peak_bytes(target: TargetModel, sequences: int, tokens: int, feature_layers: int) -> int:
    """A rough upper bound on the memory the target's forward pass over a micro-batch needs on top of its
    weights: one layer's activations (hidden states, attention and MLP intermediates) for every token, the
    captured feature layers, and a block of the LM head's float32 log-sum-exp."""
    itemsize = torch.finfo(target.dtype).bits // 8
    intermediate = int(getattr(target.config, "intermediate_size", 4 * target.hidden_size))
    per_token = (6 * target.hidden_size + 3 * intermediate + feature_layers * target.hidden_size) * itemsize
    return sequences * tokens * per_token + LSE_ROWS * target.vocab_size * 4


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on `device` (CUDA: what the driver reports; CPU: the kernel's MemAvailable),
    or None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def check_online_memory(target: TargetModel, sequences: int, tokens: int, feature_layers: int) -> None:
    """Refuse an online-feature run whose target forward pass would not fit beside the loaded weights, before it
    starts, with the ways out."""
    needed = online_peak_bytes(target, sequences, tokens, feature_layers)
    free = available_memory(target.device)
    if free is not None and needed > free:
        raise OnlineMemoryError(
            f"online target features need about {needed / 2**30:.1f} GiB for the target's forward pass over "
            f"{sequences} sequences x {tokens} tokens, but {target.device} has {free / 2**30:.1f} GiB free; lower "
            f"--micro-batch or --max-length, or build a feature cache (`dspark data cache`) and train from it")
