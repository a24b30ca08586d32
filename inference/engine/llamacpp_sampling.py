"""A sequence's sampler on llama.cpp: its own `llama_sampler` chain, and OpenAI's log-probability entries.

The chain follows llama.cpp's default order: logit bias, penalties, top-k, top-p, min-p, temperature, then a seeded
draw (`dist`), or `greedy` at temperature 0; samplers whose setting changes nothing are left out.
`llama_sampler_sample` runs it on the logits of one batch position and accepts the token it picks into every
sampler of the chain (the penalty window), so the chain is the sequence's whole state.

A chain that is `greedy` alone (temperature 0, no bias, no penalties) is not run: its choice is the logits'
argmax, which numpy finds in a tenth of the time `llama_sampler_sample` takes to copy the 262k logits into
candidates first (0.03 against 0.29 ms per token for the demo model; 8 sequences x 0.26 ms is 3 % of a decode
step on 2 cores). Both take the first of equal maxima.

A chain of `temp` + `dist` alone (temperature > 0 with OpenAI's defaults: no top-k, top-p 1, min-p 0, no bias, no
penalties) is not run either: `SoftmaxDraw` draws from the same distribution in an eighth of the time.

A grammar (structured output) stands beside the chain, as in llama.cpp's own `common_sampler`: the chain picks a
token from all the logits, the grammar checks that one token, and only when it refuses is the choice made again
from the logits the grammar allows. Checking every token of a 262k vocabulary at every step would cost more than
the forward pass of a small model.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

from inference.engine.base import GenerationRequest, InvalidRequest
from inference.engine.sampling import SamplingParams

MAX_TOP_LOGPROBS = 20
BANNED = -100.0  # a logit bias at or below this bans the token (OpenAI's convention)
DRAW_BLOCK = 1024  # SoftmaxDraw sums the probabilities in blocks of this many


_CLOSING = threading.Lock()


class LlamaSampler:
    """One sequence's sampling state: a llama_sampler chain, its grammar (0: none), and how many alternatives to
    report with each token (None: no log probabilities)."""

    def __init__(self, chain: int, top_logprobs: int | None, grammar: int = 0):
        self.chain = chain
        self.grammar = grammar
        self.top_logprobs = top_logprobs
        self.greedy = False  # the chain is `greedy` alone: its choice is the argmax (module doc)
        self.draw: SoftmaxDraw | None = None  # the chain is `temp` + `dist` alone: this draws instead (module doc)
        self._candidates = None  # (V,) llama_token_data, for the grammar's second choice

    def sample(self, context: int, index: int, n_vocab: int) -> int:
        """The next token from the logits of batch position `index`, accepted into the chain (and grammar)."""
        import llama_cpp

        if not self.grammar:
            if self.greedy:  # greedy keeps no state to accept a token into
                return int(logits_at(context, index, n_vocab).argmax())
            if self.draw is not None:  # nor does a plain draw, but its generator
                return self.draw(logits_at(context, index, n_vocab))
            return llama_cpp.llama_sampler_sample(self.chain, context, index)
        logits = logits_at(context, index, n_vocab)
        token = self._choose(logits, with_grammar=False)
        if not self._grammar_allows(token):
            token = self._choose(logits, with_grammar=True)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def _choose(self, logits, *, with_grammar: bool) -> int:
        """Apply the chain (after the grammar) to every token's logit; the token it selects."""
        import llama_cpp
        import numpy as np

        if self._candidates is None:
            self._candidates = np.zeros(len(logits), dtype=[("id", np.int32), ("logit", np.float32),
                                                            ("p", np.float32)])
        candidates = self._candidates
        candidates["id"] = np.arange(len(logits), dtype=np.int32)  # samplers sort them in place
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(logits), selected=-1,
            sorted=False)
        if with_grammar:
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
        return int(array.data[array.selected].id)

    def _grammar_allows(self, token: int) -> bool:
        import llama_cpp

        one = llama_cpp.llama_token_data(id=token, logit=1.0, p=0.0)
        array = llama_cpp.llama_token_data_array(data=ctypes.pointer(one), size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        return math.isfinite(array.data[0].logit)

    def close(self) -> None:
        """Free the chain and the grammar once, whoever calls first: the job's thread when it ends, or the model
        closing every sampler still open (a worker shutting down does both at once)."""
        import llama_cpp

        with _CLOSING:
            chain, grammar, self.chain, self.grammar = self.chain, self.grammar, 0, 0
        if chain:
            llama_cpp.llama_sampler_free(chain)  # frees every sampler in the chain
        if grammar:
            llama_cpp.llama_sampler_free(grammar)

    # `quietly` is bound here: at interpreter shutdown the module's globals (contextlib, llama_cpp) may be None.
    def __del__(self, quietly=contextlib.suppress) -> None:  # a sampler dropped without close() still frees its chain
        with quietly(Exception):
            self.close()


class SoftmaxDraw:
    """A token drawn from softmax(logits / temperature) over the whole vocabulary: what llama.cpp's `temp` + `dist`
    chain does, without its cost. That chain exponentiates the logits in a scalar loop: 2.2 ms per token per
    sequence for the demo model's 262,144 on 2 cores, ~18 ms of every 8-sequence decode step, and on a GPU machine
    it was the step (a sampled 8-stream run went at a fifth of the greedy one). Here numpy exponentiates them at
    once, and the draw sums the probabilities in blocks first, so that only the block the draw falls in is summed
    entry by entry: 0.29 ms. Its generator is its own, seeded from the request (none: from the OS): a seed gives
    the same tokens alone or in a batch, but not the tokens llama.cpp's generator would have given."""

    def __init__(self, temperature: float, seed: int | None, n_vocab: int):
        import numpy as np

        self.scale = 1.0 / temperature
        self.n_vocab = n_vocab
        self.generator = np.random.default_rng(seed)
        blocks = -(-n_vocab // DRAW_BLOCK)
        self._weights = np.zeros(blocks * DRAW_BLOCK, dtype=np.float32)  # the entries past n_vocab stay 0

    def __call__(self, logits) -> int:
        import numpy as np

        weights = self._weights[: self.n_vocab]
        with np.errstate(over="ignore"):
            np.multiply(logits, self.scale, out=weights)
        top = weights.max()
        if not np.isfinite(top):  # a temperature so near 0 that the scaled logits overflow: that is greedy
            return int(np.argmax(logits))
        weights -= top
        np.exp(weights, out=weights)  # unnormalized: the draw scales its point by the total instead
        blocks = self._weights.reshape(-1, DRAW_BLOCK)
        ends = np.cumsum(blocks.sum(axis=1, dtype=np.float64))
        point = self.generator.random() * ends[-1]
        block = min(int(np.searchsorted(ends, point, side="right")), len(ends) - 1)
        start = ends[block - 1] if block else 0.0
        offset = int(np.searchsorted(np.cumsum(blocks[block], dtype=np.float64), point - start, side="right"))
        token = min(block * DRAW_BLOCK + min(offset, DRAW_BLOCK - 1), self.n_vocab - 1)
        return token if weights[token] > 0 else int(weights.argmax())  # a rounding edge never picks a 0


def logits_at(context: int, index: int, n_vocab: int):
    """(V,) float32 view of the logits llama.cpp kept for batch position `index` (valid until the next decode)."""
    import llama_cpp
    import numpy as np

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(context, index), shape=(n_vocab,))


def build_sampler(vocab: int, n_vocab: int, n_ctx: int, request: GenerationRequest, history: Sequence[int],
                  n_prompt: int) -> LlamaSampler:
    """A chain for `request`, its penalty window filled from `history` and its grammar advanced through the
    output already sent (`history[n_prompt:]`), never through the prompt."""
    import llama_cpp

    params = request.sampling
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    sampler = LlamaSampler(chain, _top_logprobs(request.logprobs))
    try:
        if request.structure:
            sampler.grammar = _grammar(vocab, request.structure)
        bias = _logit_bias(params.logit_bias, n_vocab)
        if bias:
            llama_cpp.llama_sampler_chain_add(chain, bias)
        penalties = _penalties(params, n_vocab, n_ctx)
        if penalties:
            llama_cpp.llama_sampler_chain_add(chain, penalties)
        for link in _filters_and_draw(params):
            llama_cpp.llama_sampler_chain_add(chain, link)
        unbiased = not bias and not penalties  # the filters and the draw are the whole chain
        sampler.greedy = params.greedy and unbiased
        if unbiased and not sampler.grammar and _draws_plainly(params):
            sampler.draw = SoftmaxDraw(params.temperature, _seed(params), n_vocab)
        if penalties:
            window = penalty_window(params.repeat_last_n, n_ctx)
            for token in history[-window:]:
                llama_cpp.llama_sampler_accept(penalties, token)
        if sampler.grammar:
            for token in history[n_prompt:]:
                llama_cpp.llama_sampler_accept(sampler.grammar, token)
    except BaseException:
        sampler.close()
        raise
    return sampler


def _top_logprobs(logprobs: int | None) -> int | None:
    return None if logprobs is None else max(0, min(int(logprobs), MAX_TOP_LOGPROBS))


def _grammar(vocab: int, structure: dict[str, Any]) -> int:
    import llama_cpp

    from inference.engine.grammar import compile_structure

    grammar = llama_cpp.llama_sampler_init_grammar(vocab, compile_structure(structure).encode("utf-8"), b"root")
    if not grammar:
        raise InvalidRequest("llama.cpp could not parse the grammar compiled from this structured output request.")
    return grammar


def _logit_bias(bias: dict[int, float], n_vocab: int) -> int | None:
    import llama_cpp

    entries = [(int(token), -math.inf if value <= BANNED else float(value))
               for token, value in bias.items() if 0 <= int(token) < n_vocab and value]
    if not entries:
        return None
    array = (llama_cpp.llama_logit_bias * len(entries))(*(llama_cpp.llama_logit_bias(t, v) for t, v in entries))
    return llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(entries), array)  # copies the array


def penalty_window(repeat_last_n: int, n_ctx: int) -> int:
    """The tokens the penalties look back on: -1 is the whole context (llama.cpp itself would read it as 0)."""
    return n_ctx if repeat_last_n < 0 else repeat_last_n


def _penalties(params: SamplingParams, n_vocab: int, n_ctx: int) -> int | None:
    import llama_cpp

    neutral = (params.repeat_penalty == 1.0 and params.frequency_penalty == 0.0
               and params.presence_penalty == 0.0)
    window = penalty_window(params.repeat_last_n, n_ctx)
    if neutral or window == 0:
        return None
    return llama_cpp.llama_sampler_init_penalties(n_vocab, window, params.repeat_penalty, params.frequency_penalty,
                                                  params.presence_penalty)


def _filters_and_draw(params: SamplingParams) -> list[int]:
    import llama_cpp

    if params.greedy:
        return [llama_cpp.llama_sampler_init_greedy()]
    links = []
    if params.top_k > 0:
        links.append(llama_cpp.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        links.append(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        links.append(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
    seed = _seed(params)
    links += [llama_cpp.llama_sampler_init_temp(params.temperature),
              llama_cpp.llama_sampler_init_dist(llama_cpp.LLAMA_DEFAULT_SEED if seed is None else seed)]
    return links


def _seed(params: SamplingParams) -> int | None:
    """The request's seed as a 32-bit number (None: none given, so a random one)."""
    return None if params.seed is None else params.seed & 0xFFFFFFFF


def _draws_plainly(params: SamplingParams) -> bool:
    """The filters leave every token in (OpenAI's defaults): the chain is `temp` + `dist` alone."""
    return not params.greedy and params.top_k <= 0 and params.top_p >= 1.0 and params.min_p <= 0.0


# ---------------------------------------------------------------------------------------------------------
# Log probabilities, from the model's own logits at the sampled position (before bias, penalties, grammar).


def log_softmax(logits) -> Any:
    """(V,) float32 logits -> (V,) float64 log probabilities."""
    import numpy as np

    row = logits.astype(np.float64)
    peak = row.max()
    return row - (peak + np.log(np.exp(row - peak).sum()))


def logprob_entry(logprobs, token: int, top: int, piece: Callable[[int], bytes]) -> dict[str, Any]:
    """OpenAI's per-token entry: token, logprob, bytes, top_logprobs (the `top` most likely, best first)."""
    import numpy as np

    def described(t: int) -> dict[str, Any]:
        raw = piece(t)
        return {"token": raw.decode("utf-8", errors="replace"), "bytes": list(raw)}

    alternatives = []
    if top:
        best = np.argpartition(-logprobs, top - 1)[:top]
        best = best[np.argsort(-logprobs[best], kind="stable")]
        alternatives = [{**described(int(t)), "logprob": float(logprobs[t])} for t in best]
    return {**described(token), "logprob": float(logprobs[token]), "top_logprobs": alternatives}
