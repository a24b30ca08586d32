"""The KV cache of the MLX BatchModel: slots of mlx-lm `KVCache`s, and what one forward pass over several slots sees.

Each slot keeps its sequence's keys and values in mlx-lm's own `KVCache`, one per attention layer, so trimming a slot
is the caches' `trim` and saving it is copying their state arrays. A forward pass over several slots hands the model
one `SlotBatchCache` per layer (mlx-lm's cache interface: `offset`, `update_and_fetch`, `make_mask`). It writes each
row's new keys and values into that row's slot and gives attention the rows' keys side by side, padded to the
longest, with a mask that lets each row's queries see its own slot's positions up to their own: sequences at
different positions, in any slots, decode together (the way mlx-lm's `BatchKVCache` pads and masks, without moving
a slot's cache when others join or leave).

Imports mlx: only `MlxBackend.load` imports this module, after checking that mlx is installed.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
from mlx_lm.models.cache import KVCache


class SlotCache:
    """One slot: a `KVCache` per layer, and how many of its positions hold the slot's sequence (`length`)."""

    def __init__(self, n_layers: int):
        self.layers = [KVCache() for _ in range(n_layers)]
        self.length = 0

    @property
    def nbytes(self) -> int:
        return sum(cache.nbytes for cache in self.layers)

    def trim(self, keep: int) -> None:
        """Forget the positions from `keep` on; an emptied slot gives its memory back."""
        keep = max(0, min(keep, self.length))
        if keep == 0:
            self.layers = [KVCache() for _ in self.layers]
        else:
            for cache in self.layers:
                cache.trim(cache.offset - keep)
        self.length = keep

    def write_from(self, start: int) -> None:
        """Make the next write land at position `start` (the slot holds at least that many); the positions from
        `start` on no longer count as the sequence's until the write is done."""
        for cache in self.layers:
            cache.trim(cache.offset - start)
        self.length = min(self.length, start)

    def save(self, n_tokens: int) -> tuple[list[tuple[mx.array, mx.array]], int]:
        """Copies of each layer's first `n_tokens` keys and values, (1, n_kv_heads, n_tokens, head_dim) each, and
        their size in bytes."""
        n_tokens = min(n_tokens, self.length)
        arrays = [] if n_tokens == 0 else [
            (mx.contiguous(cache.keys[..., :n_tokens, :]), mx.contiguous(cache.values[..., :n_tokens, :]))
            for cache in self.layers
        ]
        mx.eval(arrays)
        return arrays, sum(keys.nbytes + values.nbytes for keys, values in arrays)

    def restore(self, arrays: Sequence[tuple[mx.array, mx.array]], n_tokens: int) -> None:
        """Hold the first `n_tokens` positions of saved arrays, in buffers of its own (the saved copy stays as
        it was, however the slot is written to later)."""
        self.trim(0)
        if n_tokens == 0:
            return
        for cache, (keys, values) in zip(self.layers, arrays, strict=True):
            cache.keys = _buffer_holding(keys[..., :n_tokens, :])
            cache.values = _buffer_holding(values[..., :n_tokens, :])
            cache.offset = n_tokens
        mx.eval([(cache.keys, cache.values) for cache in self.layers])
        self.length = n_tokens

    def arrays(self) -> list[mx.array]:
        """The state to evaluate after a forward pass wrote into the slot."""
        return [array for cache in self.layers if cache.keys is not None for array in (cache.keys, cache.values)]


def _buffer_holding(array: mx.array) -> mx.array:
    """A new buffer, grown in `KVCache.step`s like mlx-lm's, whose first positions are `array` (1, H, T, D)."""
    batch, heads, length, dim = array.shape
    capacity = -(-length // KVCache.step) * KVCache.step
    buffer = mx.zeros((batch, heads, capacity, dim), array.dtype)
    buffer[..., :length, :] = array
    return buffer


class BatchLayout:
    """Where the rows of one forward pass stand: row i writes `counts[i]` new positions from `starts[i]` on."""

    def __init__(self, starts: Sequence[int], counts: Sequence[int]):
        self.starts = list(starts)
        self.counts = list(counts)
        self.offsets = mx.array(self.starts)  # (B,): each row's first new position, for the rotary embedding
        self.width = max(s + c for s, c in zip(self.starts, self.counts, strict=True))  # L: positions attended
        self._masks: dict[tuple[int, int | None], mx.array] = {}

    def mask(self, n_queries: int, window_size: int | None = None) -> mx.array:
        """(B, 1, N, L), True where a row's query may see a position: its own slot's, up to its own (and within
        the last `window_size` for a sliding-window layer). Padded keys and padded queries see nothing that
        matters: a real query never reaches past its own position."""
        key = (n_queries, window_size)
        if key not in self._masks:
            queries = self.offsets[:, None] + mx.arange(n_queries)[None]  # (B, N): each query's position
            positions = mx.arange(self.width)[None, None]  # (1, 1, L)
            visible = positions <= queries[..., None]  # (B, N, L)
            if window_size is not None:
                visible = visible & (positions > queries[..., None] - window_size)
            self._masks[key] = visible[:, None]  # (B, 1, N, L)
        return self._masks[key]


class SlotBatchCache:
    """One attention layer's view of the slots in a forward pass, in place of mlx-lm's cache for that layer."""

    def __init__(self, layout: BatchLayout, caches: Sequence[KVCache], window: int | None = None):
        self.layout = layout
        self.caches = list(caches)  # this layer's KVCache of each row's slot
        self.window = window  # a sliding-window layer's (where the model would keep a RotatingKVCache)

    @property
    def offset(self) -> mx.array:
        return self.layout.offsets  # (B,)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Store each row's new keys and values (B, H, N, D; a row's padding is not stored) in its slot; return
        every row's keys and values so far, (B, H, L, D), zero-padded after each row's last position."""
        all_keys, all_values = [], []
        for row, (cache, count) in enumerate(zip(self.caches, self.layout.counts, strict=True)):
            row_keys, row_values = cache.update_and_fetch(keys[row : row + 1, :, :count],
                                                          values[row : row + 1, :, :count])  # (1, H, n_i, D)
            padding = self.layout.width - row_keys.shape[2]
            if padding:
                pad = [(0, 0), (0, 0), (0, padding), (0, 0)]
                row_keys, row_values = mx.pad(row_keys, pad), mx.pad(row_values, pad)
            all_keys.append(row_keys)
            all_values.append(row_values)
        if len(all_keys) == 1:
            return all_keys[0], all_values[0]
        return mx.concatenate(all_keys, axis=0), mx.concatenate(all_values, axis=0)  # (B, H, L, D)

    def make_mask(self, n_queries: int, return_array: bool = False, window_size: int | None = None,
                  **_: object) -> mx.array:
        # Always an array: the rows stand at different positions. A sliding-window layer's own window unless the
        # model names one (as mlx-lm's RotatingKVCache.make_mask).
        return self.layout.mask(n_queries, window_size if window_size is not None else self.window)
