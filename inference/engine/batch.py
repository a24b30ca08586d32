"""The contract between the scheduler and a backend's loaded model: token ids in slots of one KV cache.

A backend loads weights and offers a `BatchModel`: a KV cache with `n_slots` slots (one sequence each), a
`decode` that runs the new tokens of several slots in one forward pass and samples the next token of each slot
that asks for it, and the slot operations the prefix cache needs (trim, copy, save to host memory, restore).
Everything above token ids (which sequence gets which slot, prefill chunks, the prefix cache, detokenizing,
stop strings, finish reasons) happens once, in `scheduler.py` and `output.py`, for every backend.

A backend that cannot batch yet has `n_slots == 1` and says so (`batching` False on its capabilities).
Nothing here imports Django, torch, llama.cpp or mlx.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from inference.engine.base import GenerationRequest


class KVCacheFull(Exception):
    """decode() found no room in the KV cache for the batch; nothing was changed. The scheduler frees room
    (cached slots first, then the youngest running sequence) and tries again."""


@dataclass
class SlotWork:
    """One slot's part of one decode: `tokens` go into slot `slot` at positions `start`, `start + 1`, ...
    (`start` is the number of tokens the slot already holds for its sequence). With `sample`, the next token is
    sampled after the last of them with `sampler` (the sequence's own, from `BatchModel.sampler`)."""

    slot: int
    tokens: list[int]
    start: int
    sample: bool
    sampler: Any = None


@dataclass
class Sampled:
    """A token sampled for a slot, with OpenAI's log-probability entry when its sampler was asked for them
    ({"token", "logprob", "bytes", "top_logprobs"}; from the model's own distribution at that position)."""

    slot: int
    token: int
    logprobs: dict[str, Any] | None = None


@dataclass
class SavedKV:
    """A slot's KV cache copied to host memory (`data` is the backend's own), restorable into any slot."""

    data: Any
    nbytes: int
    n_tokens: int


class Sampler(Protocol):
    """A sequence's sampling state: its parameters, random stream, penalty history, grammar state."""

    def close(self) -> None: ...


class BatchModel(Protocol):
    n_slots: int  # sequences decoded together (1: this backend does not batch)
    n_ctx: int  # the most tokens one sequence may hold: prompt and output
    kv_capacity: int  # KV cells all slots share (n_ctx * n_slots when each slot has its own)
    memory_bytes: int  # weights and KV cache, for the model cache's budget
    eog_ids: frozenset[int]  # tokens that end a generation
    # True where one forward pass takes only slots with consecutive indices (llama.cpp with a KV stream per slot
    # cuts a batch into one physical batch per run of consecutive sequence ids): the scheduler then places a new
    # sequence beside the running ones. A backend without the attribute batches any slots together.
    batches_adjacent_slots_only: bool

    def render_prompt(self, request: GenerationRequest) -> str:
        """The exact text the model sees: its chat template applied (sandboxed), or the raw prompt."""

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a rendered prompt: special tokens parsed, BOS added unless the text starts with it."""

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of `ids` (a half character at the end decodes as U+FFFD; the streaming detokenizer waits)."""

    def sampler(self, request: GenerationRequest, history: Sequence[int], n_prompt: int) -> Sampler:
        """A new sampler for one sequence with the request's parameters (temperature, top-k/p, min-p,
        penalties, logit bias, seed, grammar from `request.json_schema`, logprobs). `history` is what the sequence
        holds so far: the prompt (`history[:n_prompt]`) and, when a job is resumed elsewhere, the output already
        sent (`history[n_prompt:]`, through which the grammar is advanced)."""

    def decode(self, work: list[SlotWork]) -> list[Sampled]:
        """Run every item's tokens into its slot in one forward pass where the backend can; return the tokens
        sampled for the items with `sample`, in the order of `work`. Raises KVCacheFull (changing nothing)."""

    # The slot operations return how many positions the slot holds afterwards: what was asked, or fewer (0, the
    # slot emptied) where the backend cannot cut there, e.g. a sliding-window cache that has already dropped the
    # positions the next one attends to; the scheduler recomputes the rest. (None counts as what was asked.)

    def kv_trim(self, slot: int, keep: int) -> int | None:
        """Forget the slot's positions from `keep` on (keep 0 empties it)."""

    def kv_copy(self, source: int, target: int, n_tokens: int) -> int | None:
        """Make `target` hold the first `n_tokens` positions of `source` (target is emptied first)."""

    def kv_save(self, slot: int, n_tokens: int) -> SavedKV:
        """Copy the slot's first `n_tokens` positions to host memory (`n_tokens` 0 in the result: nothing usable
        could be saved)."""

    def kv_restore(self, slot: int, saved: SavedKV) -> int | None:
        """Put a saved copy into `slot` (emptied first); it then holds `saved.n_tokens` positions."""

    def close(self) -> None: ...
