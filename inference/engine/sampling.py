"""One set of sampling parameters for every backend, and the sampler of our own engines.

llama.cpp keeps its native sampler chain (set from these same parameters); the PyTorch and MLX
engines sample with `sample_next_token` below.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters as the OpenAI API names them, plus llama.cpp's common extras.

    temperature 0 means greedy decoding. top_k 0 and top_p 1.0 and min_p 0.0 disable their filters.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


# ---------------------------------------------------------------------------------------------------------
# The sampler of our own engines. Same order as llama.cpp's default chain: logit bias, penalties,
# top-k, top-p, min-p, temperature, then a draw (or argmax when greedy).


def sample_next_token(logits, params: SamplingParams, history, generator=None) -> int:
    """Pick the next token from `logits` (V,) given the tokens so far (`history`: prompt + output).

    `generator` is a torch.Generator; seed it from `params.seed` (see `make_generator`) so the same
    seed gives the same text.
    """
    import torch

    if params.greedy and not params.logit_bias and not has_penalties(params, history):
        return int(torch.argmax(logits.float()))  # nothing to adjust (bf16 argmax is 3x slower than a cast)
    logits = logits.float().clone()
    apply_logit_bias(logits, params.logit_bias)
    apply_penalties(logits, params, history)
    if params.greedy:
        return int(torch.argmax(logits))
    ids, kept = filter_candidates(logits, params)
    probs = torch.softmax(kept / params.temperature, dim=-1)
    choice = torch.multinomial(probs, 1, generator=generator)
    return int(ids[choice])


def sample_rows(logits, params: SamplingParams, histories, generator=None) -> list[int]:
    """`sample_next_token` for each row of `logits` (B, V), with `histories[i]` for row i; greedy
    rows with nothing to adjust take one batched argmax."""
    if params.greedy and not params.logit_bias and not any(has_penalties(params, h) for h in histories):
        return logits.float().argmax(dim=-1).tolist()
    return [sample_next_token(row, params, history, generator)
            for row, history in zip(logits, histories, strict=True)]


def make_generator(seed: int | None):
    """A CPU torch.Generator seeded from `seed`, or from fresh entropy when it is None."""
    import torch

    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def apply_logit_bias(logits, logit_bias: dict[int, float]) -> None:
    vocab = logits.shape[-1]
    for token_id, bias in logit_bias.items():
        if 0 <= int(token_id) < vocab:
            logits[int(token_id)] += float(bias)


def has_penalties(params: SamplingParams, history) -> bool:
    """Whether `apply_penalties` would change anything."""
    no_penalty = params.repeat_penalty == 1.0 and params.presence_penalty == 0.0 and params.frequency_penalty == 0.0
    return not (no_penalty or params.repeat_last_n == 0 or not len(history))


def apply_penalties(logits, params: SamplingParams, history) -> None:
    """llama.cpp's penalties over the last `repeat_last_n` tokens (-1: all, 0: none): repeat divides
    positive logits and multiplies negative ones; frequency subtracts per occurrence; presence once."""
    import torch

    if not has_penalties(params, history):
        return
    window = list(history) if params.repeat_last_n < 0 else list(history)[-params.repeat_last_n :]
    ids, counts = torch.unique(torch.tensor(window, dtype=torch.long), return_counts=True)
    valid = (ids >= 0) & (ids < logits.shape[-1])
    ids, counts = ids[valid], counts[valid].float()
    seen = logits[ids]
    if params.repeat_penalty != 1.0:
        seen = torch.where(seen > 0, seen / params.repeat_penalty, seen * params.repeat_penalty)
    seen = seen - counts * params.frequency_penalty - params.presence_penalty
    logits[ids] = seen


def filter_candidates(logits, params: SamplingParams):
    """(token ids, their logits) left after top-k, top-p and min-p, best first; at least one."""
    import torch

    k = logits.shape[-1] if params.top_k <= 0 else min(params.top_k, logits.shape[-1])
    kept, ids = torch.topk(logits, k)  # sorted, best first
    if params.top_p < 1.0:
        probs = torch.softmax(kept, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the better candidates
        n = max(1, int((before < params.top_p).sum()))
        kept, ids = kept[:n], ids[:n]
    if params.min_p > 0.0:
        probs = torch.softmax(kept, dim=-1)
        n = max(1, int((probs >= params.min_p * probs[0]).sum()))
        kept, ids = kept[:n], ids[:n]
    return ids, kept
