"""Building blocks shared by the architectures: norms, rotary embeddings, the KV cache, attention.

Shapes use B (sequences in the batch), T (new tokens per sequence), L (cached positions attended to),
H (query heads), Hkv (key/value heads), D (head dim), C (hidden size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inference.engine.base import ModelRefused
from inference.engine.torch.models.matvec import linear


class RMSNorm(nn.Module):
    """RMS norm computed in fp32. Gemma stores `weight - 1` and multiplies by `1 + weight`."""

    def __init__(self, dim: int, eps: float, *, unit_offset: bool = False):
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim), requires_grad=False)
        self.scale: torch.Tensor | None = None  # Gemma's fp32 `1 + weight`, once fused

    def fuse(self) -> None:
        if self.unit_offset:
            self.scale = 1.0 + self.weight.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unit_offset:  # all in fp32, one kernel
            scale = self.scale if self.scale is not None else 1.0 + self.weight.float()
            return F.rms_norm(x.float(), scale.shape, scale, self.eps).to(x.dtype)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


# ---------------------------------------------------------------------------------------------------------
# Rotary position embeddings (the "rotate half" layout of Hugging Face checkpoints)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """Inverse frequencies (D/2,) in fp32, with linear or Llama 3 scaling applied."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        return _llama3_scaled(inv_freq, scaling)
    if rope_type == "freq_factors":  # llama.cpp's rope_freqs tensor: one divisor per frequency
        return inv_freq / torch.tensor(scaling["factors"], dtype=torch.float32)
    raise ModelRefused(f"Unsupported rope scaling {rope_type!r}: supported are default, linear and llama3.")


def _llama3_scaled(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth blend between."""
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def llama3_rope_factors(head_dim: int, theta: float, scaling: dict[str, Any]) -> torch.Tensor:
    """What llama.cpp stores as `rope_freqs.weight`: the divisor of each unscaled frequency (D/2,)."""
    plain = rope_inv_freq(head_dim, theta, None)
    return plain / _llama3_scaled(plain, scaling)


class Rotary(nn.Module):
    def __init__(self, inv_freq: torch.Tensor):
        super().__init__()
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for `positions` (B, T): each (B, 1, T, D), broadcast over heads."""
        angles = positions[..., None].float() * self.inv_freq  # (B, T, D/2)
        angles = torch.cat((angles, angles), dim=-1)  # (B, T, D)
        return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated pairwise (i, i + D/2)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


# ---------------------------------------------------------------------------------------------------------
# Fused projections


def fuse_linears(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (sum of outputs, C) for several projections of the same input, so a decode step runs
    one matmul instead of several. Each module's weight (and bias) becomes a view of the fused tensor:
    no memory is duplicated and the named parameters stay as loaded."""
    weight = torch.cat([m.weight for m in linears])
    bias = torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None
    start = 0
    for m in linears:
        stop = start + m.out_features
        m.weight = nn.Parameter(weight[start:stop], requires_grad=False)
        if bias is not None:
            m.bias = nn.Parameter(bias[start:stop], requires_grad=False)
        start = stop
    return weight, bias


def fuse_projections(model: nn.Module) -> None:
    """Once the weights are loaded: fuse every Attention's q/k/v and every GatedMLP's gate/up, and
    precompute Gemma's norm scales."""
    for module in model.modules():
        if isinstance(module, (Attention, GatedMLP, RMSNorm)):
            module.fuse()


# ---------------------------------------------------------------------------------------------------------
# KV cache and attention


class KVCache:
    """Keys and values of every layer, allocated once: (rows, Hkv, max_len, D) per layer, one row per sequence.

    A forward pass writes its new keys/values into its rows at absolute positions, then reads positions [0, L)
    of those rows, L being one past the furthest position written in the pass; the masks of `ForwardStep` keep
    each row's queries on that row's own positions. A row holds no length of its own: what lies beyond the
    positions a sequence wrote (keys of an earlier, longer sequence) is never read, so nothing is ever erased.
    """

    def __init__(self, n_layers: int, max_batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 *, dtype: torch.dtype, device: torch.device | str = "cpu"):
        shape = (max_batch, n_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_batch = max_batch
        self.max_len = max_len

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def update(self, layer: int, step: ForwardStep, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, Hkv, T, D); return the cached (B, Hkv, L, D) for the batch's rows."""
        cache_k, cache_v = self.keys[layer], self.values[layer]
        if step.same_start is not None:  # every row starts at the same position: one slice copy
            start, stop = step.same_start, step.same_start + k.shape[2]
            cache_k[step.rows, :, start:stop] = k
            cache_v[step.rows, :, start:stop] = v
        else:  # rows at different positions: scatter per (row, position)
            rows = step.row_index[:, None]  # (B, 1)
            cache_k[rows, :, step.positions] = k.transpose(1, 2)  # indexed as (B, T, Hkv, D)
            cache_v[rows, :, step.positions] = v.transpose(1, 2)
        return cache_k[step.rows, :, : step.length], cache_v[step.rows, :, : step.length]

    def copy_row(self, source: int, target: int, n_positions: int) -> None:
        """Row `target` gets the first `n_positions` positions of row `source`, in every layer."""
        for cache in self.keys + self.values:
            cache[target, :, :n_positions] = cache[source, :, :n_positions]

    def save_row(self, row: int, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the row's first `n_positions` positions, copied to CPU memory: each
        (n_layers, Hkv, n_positions, D)."""
        keys = torch.stack([k[row, :, :n_positions] for k in self.keys]).to("cpu")
        values = torch.stack([v[row, :, :n_positions] for v in self.values]).to("cpu")
        return keys, values

    def restore_row(self, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put what `save_row` returned into the first positions of `row`."""
        n_positions = keys.shape[2]  # keys (n_layers, Hkv, n_positions, D)
        for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
            self.keys[layer][row, :, :n_positions] = k
            self.values[layer][row, :, :n_positions] = v


class ForwardStep:
    """Where the tokens of one forward pass go: positions (B, T), cache rows, and attention masks.

    `positions` are best given on the CPU with `device` set to the model's: the layout (a common start, the
    furthest position) is read from them there, so a CUDA step waits for nothing. `rows` are the cache rows of
    the batch's sequences: a slice, an index tensor, or a list of ints (consecutive ones become a slice, read
    without a copy); None means rows 0..B-1.
    """

    def __init__(self, positions: torch.Tensor, rows: torch.Tensor | slice | Sequence[int] | None = None, *,
                 device: torch.device | str | None = None):
        batch = positions.shape[0]
        starts = positions[:, 0]
        self.same_start = int(starts[0]) if bool((starts == starts[0]).all()) else None
        contiguous = positions.shape[1] == 1 or bool((positions[:, 1:] - positions[:, :-1] == 1).all())
        if self.same_start is not None and not contiguous:
            self.same_start = None
        self.length = int(positions.max()) + 1
        self.positions = positions if device is None else positions.to(device)
        self.rows, self.row_index = _cache_rows(rows, batch, self.positions.device)
        self._masks: dict[int | None, torch.Tensor | None] = {}

    def mask(self, sliding_window: int | None) -> torch.Tensor | None:
        """Boolean (B, 1, T, L): key position j is visible to a query at p when j <= p and
        p - j < sliding_window. None when every cached position is visible (one token, no window)."""
        if sliding_window is not None and sliding_window >= self.length:
            sliding_window = None
        if sliding_window not in self._masks:
            self._masks[sliding_window] = self._build_mask(sliding_window)
        return self._masks[sliding_window]

    def _build_mask(self, sliding_window: int | None) -> torch.Tensor | None:
        is_single_decode = self.positions.shape[0] == 1 and self.positions.shape[1] == 1
        if is_single_decode and sliding_window is None:
            return None  # L is one past this row's position: every key read is its own
        keys = torch.arange(self.length, device=self.positions.device)  # (L,)
        queries = self.positions[:, :, None]  # (B, T, 1)
        visible = keys <= queries  # (B, T, L)
        if sliding_window is not None:
            visible &= queries - keys < sliding_window
        return visible[:, None]  # (B, 1, T, L)


def _cache_rows(rows: torch.Tensor | slice | Sequence[int] | None, batch: int, device: torch.device
                ) -> tuple[torch.Tensor | slice, torch.Tensor]:
    """(rows as the cache indexes them, their index tensor (B,))."""
    if rows is None:
        rows = slice(0, batch)
    elif not isinstance(rows, (slice, torch.Tensor)):
        rows = list(rows)
        if rows == list(range(rows[0], rows[0] + batch)):
            rows = slice(rows[0], rows[0] + batch)
        else:
            rows = torch.tensor(rows, device=device)
    if isinstance(rows, slice):
        first = rows.start or 0
        return rows, torch.arange(first, first + batch, device=device)
    return rows, rows


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
           ) -> torch.Tensor:
    """q (B, H, T, D), k/v (B, Hkv, L, D) -> (B, H, T, D). Grouped-query heads share k/v."""
    if q.shape[2] == 1:
        return _attend_one_query(q, k, v, mask, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def _attend_one_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                      scale: float) -> torch.Tensor:
    """Decoding: one query per sequence. The H/Hkv query heads that share a key/value head become
    that head's "query positions", so one SDPA call runs without repeating k/v (SDPA's own
    `enable_gqa` and two plain matmuls are several times slower on CPU, in bf16 above all)."""
    batch, n_heads, _, head_dim = q.shape
    n_kv = k.shape[1]
    q = q.view(batch, n_kv, n_heads // n_kv, head_dim)  # (B, Hkv, H/Hkv, D): the heads sharing each k/v
    if mask is not None:
        mask = mask.view(batch, 1, 1, -1)  # (B, 1, 1, L): the same keys for every head of a sequence
    if q.device.type != "cpu":
        # On CUDA, SDPA may pick a backend that plans anew for every new length L (one per decoded token);
        # two small matmuls keep decode launch-bound only (45.7 vs 13.2 tok/s measured on an H200).
        out = _attend_matmul(q, k, v, mask, scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (B, Hkv, H/Hkv, D)
    return out.view(batch, n_heads, 1, head_dim)  # (B, H, 1, D)


def _attend_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   scale: float) -> torch.Tensor:
    """q (B, Hkv, G, D) against k/v (B, Hkv, L, D), mask (B, 1, 1, L) or None -> (B, Hkv, G, D)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, Hkv, G, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return torch.matmul(weights, v)


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads, optional q/k bias and per-head q/k norms."""

    def __init__(self, hidden_size: int, n_heads: int, n_kv_heads: int, head_dim: int, *, scale: float,
                 bias: bool = False, qk_norm_eps: float | None = None, norm_unit_offset: bool = False,
                 sliding_window: int | None = None):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        self.q = nn.Linear(hidden_size, n_heads * head_dim, bias=bias)
        self.k = nn.Linear(hidden_size, n_kv_heads * head_dim, bias=bias)
        self.v = nn.Linear(hidden_size, n_kv_heads * head_dim, bias=bias)
        self.o = nn.Linear(n_heads * head_dim, hidden_size, bias=False)
        self.q_norm = self.k_norm = None
        if qk_norm_eps is not None:
            self.q_norm = RMSNorm(head_dim, qk_norm_eps, unit_offset=norm_unit_offset)
            self.k_norm = RMSNorm(head_dim, qk_norm_eps, unit_offset=norm_unit_offset)
        self.qkv_weight: torch.Tensor | None = None  # (H*D + 2*Hkv*D, C) once fused
        self.qkv_bias: torch.Tensor | None = None

    def fuse(self) -> None:
        self.qkv_weight, self.qkv_bias = fuse_linears(self.q, self.k, self.v)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> q (B, T, H*D), k and v (B, T, Hkv*D)."""
        if self.qkv_weight is None:
            return self.q(x), self.k(x), self.v(x)
        kv_size = self.n_kv_heads * self.head_dim
        return linear(x, self.qkv_weight, self.qkv_bias).split(
            [self.n_heads * self.head_dim, kv_size, kv_size], dim=-1)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], layer: int,
                step: ForwardStep, cache: KVCache) -> torch.Tensor:
        batch, n_new, _ = x.shape  # (B, T, C)
        q, k, v = self.project(x)
        q = q.view(batch, n_new, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = k.view(batch, n_new, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = v.view(batch, n_new, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or Hkv, T, D)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values = cache.update(layer, step, k, v)  # (B, Hkv, L, D)
        out = attend(q, keys, values, step.mask(self.sliding_window), self.scale)  # (B, H, T, D)
        return linear(out.transpose(1, 2).reshape(batch, n_new, self.n_heads * self.head_dim), self.o.weight)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SiLU for Llama and Qwen, tanh-approximated GELU for Gemma."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str = "silu"):
        super().__init__()
        self.gate = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=False)
        if activation == "silu":
            self.act = F.silu
        elif activation in ("gelu_pytorch_tanh", "gelu_tanh"):
            self.act = lambda x: F.gelu(x, approximate="tanh")
        else:
            raise ModelRefused(f"Unsupported activation {activation!r}: supported are silu and gelu_pytorch_tanh.")
        self.gate_up_weight: torch.Tensor | None = None  # (2 * intermediate, C) once fused

    def fuse(self) -> None:
        self.gate_up_weight, _ = fuse_linears(self.gate, self.up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_weight is None:
            return self.down(self.act(self.gate(x)) * self.up(x))
        gate, up = linear(x, self.gate_up_weight).chunk(2, dim=-1)  # each (B, T, intermediate)
        return linear(self.act(gate) * up, self.down.weight)


def logits_of(hidden: torch.Tensor, lm_head: torch.Tensor, last_only: bool) -> torch.Tensor:
    """hidden (B, T, C) -> logits (B, T, V), or (B, 1, V) for the last position only."""
    if last_only:
        # as a 2-D (B, C): a (B, 1, C) slice of (B, T, C) keeps odd strides that send bf16 to a kernel
        # some 50x slower (seconds per call for a 262k vocabulary)
        return _few_rows_linear(hidden[:, -1], lm_head)[:, None]  # (B, 1, V)
    return F.linear(hidden, lm_head)


def _few_rows_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (M, C) @ weight (V, C).T for a few rows M. On CPU in fp32, F.linear's matrix-vector kernel runs
    on one thread (about 11 GB/s here); cutting the weight into row blocks and running them as a batched
    matmul spreads them over all threads: the 262k x 640 output projection takes half the time."""
    n_rows, width = weight.shape
    blocks = 4 * torch.get_num_threads()
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or n_rows % blocks or x.shape[0] > 16:
        return linear(x, weight)
    out = torch.bmm(weight.view(blocks, n_rows // blocks, width), x.T.expand(blocks, width, x.shape[0]))
    return out.view(n_rows, x.shape[0]).T  # (M, V)
