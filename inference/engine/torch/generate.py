"""Generation as small named steps: `prefill`, `decode_one_token`, then `generate_tokens` (one
sequence, streamed) or `generate_batch` (several sequences at different positions, decoded together)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from inference.engine.sampling import SamplingParams, make_generator, sample_next_token, sample_rows
from inference.engine.torch.models.layers import ForwardStep, KVCache

PREFILL_CHUNK = 512  # prompt tokens per forward pass: bounds the (T, L) attention masks


@torch.inference_mode()
def prefill(model, cache: KVCache, tokens: Sequence[int], *, row: int = 0, start: int = 0) -> torch.Tensor:
    """Run the prompt `tokens` into cache row `row` from position `start`; logits (V,) of the last one."""
    return prefill_rows(model, cache, [tokens], first_row=row, start=start)[0]


@torch.inference_mode()
def prefill_rows(model, cache: KVCache, prompts: Sequence[Sequence[int]], *, first_row: int = 0,
                 start: int = 0) -> torch.Tensor:
    """Run prompts of equal length into cache rows first_row, first_row + 1, ... in one pass each chunk
    (the weights are read once for all of them); logits (B, V) of their last tokens."""
    device = cache.keys[0].device
    rows = slice(first_row, first_row + len(prompts))
    logits = None
    for offset in range(0, len(prompts[0]), PREFILL_CHUNK):
        chunk = torch.tensor([p[offset : offset + PREFILL_CHUNK] for p in prompts], device=device)  # (B, T)
        positions = torch.arange(chunk.shape[1], device=device)[None].expand(len(prompts), -1) + start + offset
        logits = model(chunk, ForwardStep(positions, rows=rows), cache, last_only=True)  # (B, 1, V)
    return logits[:, -1]


@torch.inference_mode()
def decode_one_token(model, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor,
                     rows: torch.Tensor | slice | None = None) -> torch.Tensor:
    """One new token per sequence: tokens (B,) at positions (B,) -> logits (B, V)."""
    step = ForwardStep(positions[:, None], rows=rows)  # positions (B, 1)
    return model(tokens[:, None], step, cache, last_only=True)[:, -1]  # (B, V)


def generate_tokens(model, cache: KVCache, prompt: Sequence[int], *, params: SamplingParams,
                    max_new_tokens: int, stop_ids: set[int] | frozenset[int] = frozenset(),
                    should_stop: Callable[[], bool] = lambda: False) -> Iterator[int]:
    """Yield sampled token ids for one sequence until a stop id (yielded too), `max_new_tokens`,
    or `should_stop()` (checked between tokens)."""
    generator = make_generator(params.seed)
    history = list(prompt)
    device = cache.keys[0].device
    logits = prefill(model, cache, prompt)
    for n in range(max_new_tokens):
        token = sample_next_token(logits, params, history, generator)
        history.append(token)
        yield token
        if token in stop_ids or n + 1 == max_new_tokens or should_stop():
            return
        logits = decode_one_token(model, cache, torch.tensor([token], device=device),
                                  torch.tensor([len(history) - 1], device=device))[0]


def generate_batch(model, cache: KVCache, prompts: Sequence[Sequence[int]], *, params: SamplingParams,
                   max_new_tokens: int, stop_ids: set[int] | frozenset[int] = frozenset()) -> list[list[int]]:
    """Generate for several prompts at once: each is prefilled into its own cache row, then all
    are decoded together, each at its own position. Finished rows keep decoding (padding) but their
    output stops growing."""
    device = cache.keys[0].device
    generator = make_generator(params.seed)
    histories = [list(p) for p in prompts]
    outputs: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    if len({len(p) for p in prompts}) == 1:
        logits = prefill_rows(model, cache, prompts)  # (B, V)
    else:
        logits = torch.stack([prefill(model, cache, p, row=i) for i, p in enumerate(prompts)])  # (B, V)
    for _ in range(max_new_tokens):
        next_tokens = sample_rows(logits, params, histories, generator)
        for i, token in enumerate(next_tokens):
            histories[i].append(token)
            if not finished[i]:
                outputs[i].append(token)
                finished[i] = token in stop_ids or len(outputs[i]) >= max_new_tokens
        if all(finished):
            break
        positions = torch.tensor([len(h) - 1 for h in histories], device=device)  # (B,)
        logits = decode_one_token(model, cache, torch.tensor(next_tokens, device=device), positions,
                                  rows=slice(0, len(prompts)))
    return outputs
