"""Sampling for the torch engine: each sequence its own sampler, several sequences' rows picked at once.

The rules are those of `inference/engine/sampling.py` (`sample_next_token`: logit bias, penalties over the
history window, top-k, top-p, min-p, temperature), the same for every engine of our own. What this adds is the
state of one sequence and the batched case: the rows that only need an argmax take one argmax together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from inference.engine.sampling import SamplingParams, has_penalties, make_generator, sample_next_token


class TorchSampler:
    """One sequence's sampling state: its parameters, its random stream (a CPU `torch.Generator` seeded from
    `params.seed`, so a seed gives the same tokens alone or in any batch, on any device) and its history (the
    prompt, then every token sampled), which the penalties look at."""

    def __init__(self, params: SamplingParams, history: Sequence[int]):
        self.params = params
        self.history = list(history)
        self.generator = make_generator(params.seed)

    @property
    def plain_greedy(self) -> bool:
        """Whether the next token is the argmax of the logits as they come (nothing to bias or penalize)."""
        params = self.params
        return params.greedy and not params.logit_bias and not has_penalties(params, self.history)

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from logits (V,), on the CPU in fp32 (where the generator draws)."""
        return sample_next_token(logits.float().cpu(), self.params, self.history, self.generator)

    def accept(self, token: int) -> None:
        self.history.append(token)

    def close(self) -> None:
        """Nothing to free: the history and the generator go with the object."""


def sample_each(logits: Sequence[torch.Tensor], samplers: Sequence[TorchSampler]) -> list[int]:
    """The next token of each sequence: `logits[i]` (V,) sampled with `samplers[i]`, which then holds it in its
    history. The plain greedy rows take one argmax together (one device sync for all of them)."""
    tokens: list[int | None] = [None] * len(samplers)
    plain = [i for i, sampler in enumerate(samplers) if sampler.plain_greedy]
    if plain:
        rows = torch.stack([logits[i] for i in plain])  # (P, V)
        for i, token in zip(plain, rows.float().argmax(dim=-1).tolist(), strict=True):  # fp32: bf16 argmax is slow
            tokens[i] = token
    for i, sampler in enumerate(samplers):
        if tokens[i] is None:
            tokens[i] = sampler.pick(logits[i])
    for sampler, token in zip(samplers, tokens, strict=True):
        sampler.accept(token)
    return tokens
