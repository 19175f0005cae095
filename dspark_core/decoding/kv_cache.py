"""A batch of sequences sharing one transformers KV cache, with per-row lengths.

Rows grow by different amounts each round (each request accepts a different number of draft tokens).
Instead of recomputing, rejected entries stay in the cache as *holes*: masked out by the 2-D attention
mask, while RoPE positions come from each row's own token count. Columns that are holes in every row are
cropped from the tail, so a single request never has holes at all; when holes pile up in a batch, the
cache is compacted by gathering each row's valid entries.

The cache keeps every layer's full history (a plain DynamicCache, also for sliding-window layers such as
Gemma 3's) so that it can always be cropped; transformers still applies the sliding-window mask. With
holes in a batch, a window counts cache columns, so a row with holes sees slightly *fewer* true tokens in
its window than the reference model: exact for a single request, approximate for batches beyond the window.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import DynamicCache

from dspark_core.models.target import TargetFeatures

ForwardFn = Callable[..., TargetFeatures]

# Compact when holes make up more than this fraction of the cache (and at least this many columns).
_COMPACT_FRACTION = 0.5
_COMPACT_MIN_COLUMNS = 64


class BatchedKVCache:
    """Owns a DynamicCache plus a [B, C] validity mask; `lengths[b]` is row b's number of cached tokens."""

    def __init__(self, forward: ForwardFn, batch_size: int, device: torch.device):
        self._forward = forward
        self.cache = DynamicCache()
        self.device = device
        self.mask = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    def extend(self, tokens: torch.Tensor, counts: torch.Tensor, **forward_kwargs) -> TargetFeatures:
        """Append tokens [B, L] (row b's first counts[b] are real, the rest padding) and run the model.

        Returns the forward pass outputs for all L columns; padded columns' outputs are meaningless.
        """
        width = tokens.shape[1]
        columns = torch.arange(width, device=self.device)[None, :]
        block_mask = (columns < counts[:, None]).long()
        mask = torch.cat([self.mask, block_mask], dim=1)
        positions = self.lengths[:, None] + columns
        out = self._forward(tokens, attention_mask=mask, position_ids=positions, cache=self.cache, **forward_kwargs)
        self.mask = mask
        self.lengths = self.lengths + counts
        return out

    def truncate(self, new_lengths: torch.Tensor) -> None:
        """Keep only the first new_lengths[b] cached tokens of each row (new_lengths <= lengths)."""
        rank = self.mask.cumsum(dim=1)  # 1-based index of each valid entry within its row
        self.mask = self.mask * (rank <= new_lengths[:, None]).long()
        self.lengths = torch.minimum(self.lengths, new_lengths)
        self._crop_tail()
        self._maybe_compact()

    def add_rows(self, count: int) -> None:
        """Append `count` empty rows (new requests): every existing column is a hole for them."""
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False) and layer.keys is not None:
                layer.keys = torch.cat([layer.keys, layer.keys.new_zeros(count, *layer.keys.shape[1:])])
                layer.values = torch.cat([layer.values, layer.values.new_zeros(count, *layer.values.shape[1:])])
        self.mask = torch.cat([self.mask, self.mask.new_zeros(count, self.mask.shape[1])])
        self.lengths = torch.cat([self.lengths, self.lengths.new_zeros(count)])

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows (e.g. drop finished requests)."""
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
                layer.keys = layer.keys[rows]
                layer.values = layer.values[rows]
        self.mask = self.mask[rows]
        self.lengths = self.lengths[rows]
        self._crop_tail()
        self._maybe_compact()

    def _crop_tail(self) -> None:
        column_used = self.mask.any(dim=0)
        if column_used.all() or self.mask.shape[1] == 0:
            return
        used = torch.nonzero(column_used)
        keep = int(used[-1]) + 1 if used.numel() else 0
        drop = self.mask.shape[1] - keep
        if drop:
            self.cache.crop(-drop)
            self.mask = self.mask[:, :keep]

    def _maybe_compact(self) -> None:
        columns = self.mask.shape[1]
        if columns < _COMPACT_MIN_COLUMNS:
            return
        width = int(self.lengths.max()) if self.batch_size else 0
        if columns - width < _COMPACT_FRACTION * columns:
            return
        # Row b's valid entries move, in order, to the right end of a `width`-column layout.
        order = torch.argsort(self.mask, dim=1, stable=True)[:, columns - width :]
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
                index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
                layer.keys = layer.keys.gather(2, index)
                layer.values = layer.values.gather(2, index)
        self.mask = self.mask.gather(1, order)
