"""The forward passes of generation, as small named steps over a KV cache with one row per sequence:
`prefill` (a prompt, or a chunk of one, into a row), `prefill_rows` (chunks of equal length into several rows
in one pass) and `decode_one_token` (one new token for each of several rows, each at its own position).

They return logits and keep no state: the torch BatchModel (`batch_model.py`) knows which row holds what and
samples; the scheduler and the output processor above every backend run the token loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from inference.engine.torch.models.layers import ForwardStep, KVCache

PREFILL_CHUNK = 512  # prompt tokens per forward pass: bounds the (T, L) attention masks


@torch.inference_mode()
def prefill(model, cache: KVCache, tokens: Sequence[int], *, row: int = 0, start: int = 0) -> torch.Tensor:
    """Run the prompt `tokens` into cache row `row` from position `start`; logits (V,) of the last one."""
    return prefill_rows(model, cache, [tokens], rows=[row], starts=[start])[0]


@torch.inference_mode()
def prefill_rows(model, cache: KVCache, chunks: Sequence[Sequence[int]], *, rows: Sequence[int],
                 starts: Sequence[int]) -> torch.Tensor:
    """Run chunks of equal length into cache rows `rows`, chunk i from position `starts[i]`, in one pass
    (the weights are read once for all of them); logits (B, V) of their last tokens."""
    n_tokens = len(chunks[0])
    if any(len(chunk) != n_tokens for chunk in chunks) or n_tokens == 0:
        raise ValueError("prefill_rows runs chunks of one same, non-zero length")
    logits = None
    for offset in range(0, n_tokens, PREFILL_CHUNK):
        pieces = [chunk[offset : offset + PREFILL_CHUNK] for chunk in chunks]
        tokens = torch.tensor(pieces, device=cache.device)  # (B, T)
        positions = torch.tensor(starts)[:, None] + offset + torch.arange(len(pieces[0]))  # (B, T), on the CPU
        step = ForwardStep(positions, rows, device=cache.device)
        logits = model(tokens, step, cache, last_only=True)  # (B, 1, V)
    return logits[:, -1]


@torch.inference_mode()
def decode_one_token(model, cache: KVCache, tokens: Sequence[int], positions: Sequence[int],
                     rows: Sequence[int] | None = None) -> torch.Tensor:
    """One new token per sequence: token i at position `positions[i]` of cache row `rows[i]` (rows 0..B-1
    when None) -> logits (B, V)."""
    step = ForwardStep(torch.tensor(positions)[:, None], rows, device=cache.device)  # positions (B, 1)
    return model(torch.tensor(tokens, device=cache.device)[:, None], step, cache, last_only=True)[:, -1]
