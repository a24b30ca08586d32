"""A sequence's sampler on the MLX backend: our SamplingParams onto mlx-lm's logits processors and filters.

mlx-lm's `make_logits_processors` gives the logit bias and the repeat, presence and frequency penalties (over the
sequence's own history: prompt and output); its filters top-p, min-p and top-k run in `make_sampler`'s order; the
draw is ours, with the sequence's own random key, so a seed gives the same tokens whether the sequence runs alone
or beside others (mlx-lm's `make_sampler` draws from mlx's one global random state).

Imports mlx: only the loaded model imports this module.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors

from inference.engine.base import InvalidRequest
from inference.engine.sampling import SamplingParams

PENALTY_WINDOW_MAX = 4096  # the most tokens the penalties look back over, even for repeat_last_n -1


class MlxSampler:
    """One sequence's sampling state: parameters, penalty history, random key."""

    def __init__(self, params: SamplingParams, history: Sequence[int], *, vocab_size: int, n_ctx: int):
        check_sampling(params, vocab_size)
        self.params = params
        self.history = list(history)  # what the penalties look back over; each accepted token is appended
        self._window = penalty_window(params, n_ctx)
        self._processors = logits_processors(params, self._window)
        self._filters = filters(params, vocab_size)
        seed = params.seed if params.seed is not None else secrets.randbits(64)
        self._key = mx.random.key(seed % (1 << 64))

    def next_token(self, logits: mx.array) -> mx.array:
        """The next token (1,), lazily, from the logits (1, vocab) after this sequence's last position."""
        if self._processors:
            recent = mx.array(self.history[max(0, len(self.history) - self._window) :])  # (≤ window,)
            for process in self._processors:
                logits = process(recent, logits)
        if self.params.greedy:
            return mx.argmax(logits, axis=-1)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # (1, vocab)
        for keep in self._filters:
            logprobs = keep(logprobs)
        self._key, draw = mx.random.split(self._key)
        return mx.random.categorical(logprobs * (1.0 / self.params.temperature), key=draw)

    def accept(self, token: int) -> None:
        """The token sampled for this sequence: the penalties see it from now on."""
        self.history.append(token)

    def close(self) -> None:
        self.history = []


def check_sampling(params: SamplingParams, vocab_size: int) -> None:
    """InvalidRequest for parameters mlx-lm would refuse or silently misuse."""
    if not params.greedy:
        if not 0.0 < params.top_p <= 1.0:
            raise InvalidRequest(f"top_p must be in (0, 1], not {params.top_p}.", code="invalid_value")
        if not 0.0 <= params.min_p <= 1.0:
            raise InvalidRequest(f"min_p must be in [0, 1], not {params.min_p}.", code="invalid_value")
        if params.top_k < 0:
            raise InvalidRequest(f"top_k must be 0 (off) or more, not {params.top_k}.", code="invalid_value")
    if params.repeat_penalty <= 0:
        raise InvalidRequest(f"repeat_penalty must be above 0, not {params.repeat_penalty}.", code="invalid_value")
    for token_id in params.logit_bias:
        if not 0 <= int(token_id) < vocab_size:
            raise InvalidRequest(
                f"logit_bias names token {token_id}, but the vocabulary has {vocab_size} tokens.",
                code="invalid_value",
            )


def penalty_window(params: SamplingParams, n_ctx: int) -> int:
    """The last tokens the penalties look at, prompt included, as llama.cpp does (0: off, -1: the whole context)."""
    window = n_ctx if params.repeat_last_n < 0 else params.repeat_last_n
    return min(window, PENALTY_WINDOW_MAX)


def logits_processors(params: SamplingParams, window: int) -> list[Callable]:
    """mlx-lm's processors for the logit bias and, over the last `window` tokens, the three penalties."""
    penalties_on = window > 0

    def penalty(value: float, off: float) -> float | None:
        return value if penalties_on and value != off else None

    return make_logits_processors(
        logit_bias={int(k): float(v) for k, v in params.logit_bias.items()} or None,
        repetition_penalty=penalty(params.repeat_penalty, 1.0), repetition_context_size=window,
        presence_penalty=penalty(params.presence_penalty, 0.0), presence_context_size=window,
        frequency_penalty=penalty(params.frequency_penalty, 0.0), frequency_context_size=window,
    )


def filters(params: SamplingParams, vocab_size: int) -> list[Callable[[mx.array], mx.array]]:
    """mlx-lm's candidate filters in `make_sampler`'s order (top-p, min-p, top-k); none when greedy."""
    if params.greedy:
        return []
    chain = []
    if params.top_p < 1.0:
        chain.append(lambda logprobs: apply_top_p(logprobs, params.top_p))
    if params.min_p > 0.0:
        chain.append(lambda logprobs: apply_min_p(logprobs, params.min_p))
    if 0 < params.top_k < vocab_size:
        chain.append(lambda logprobs: apply_top_k(logprobs, params.top_k))
    return chain
