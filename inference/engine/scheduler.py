"""Continuous batching over one loaded model: sequences come and go, every step decodes them all together.

`Scheduler.add(sequence)` queues a sequence, `step()` runs one forward pass and returns the tokens sampled in it,
`finish(id)` (or `abort(id)`) takes a sequence out. Each step:

1. admits waiting sequences into free slots, users served in turn (round-robin: one user's burst of requests
   does not push a teammate's to the back), each into the slot whose cached tokens share the longest prefix
   with it — a free slot that held the same conversation, a copy of a running slot's prefix (the other choices
   of an `n > 1` request, a shared system prompt), or a conversation saved to host memory earlier; a sequence
   whose prompt another is still reading (a choice of the same request, a long shared prefix) waits a step
   and copies it instead;
2. builds one batch: the last sampled token of every decoding sequence, plus prompt chunks of the sequences
   still reading their prompts, up to `chunk_tokens` prompt tokens per step (a long prompt never stalls the
   others for more than one chunk);
3. decodes it; when the KV cache is full it frees room (cached slots first, then the newest running sequence,
   which goes back to the front of the queue and is recomputed when it returns) and tries again.

A finished sequence's slot keeps its tokens cached for the next turn of the same conversation; when a slot must
be reused for another, the tokens it held are saved to host memory (`PrefixStore`, least recently used out
first past its byte budget) and restored when that conversation comes back.

Nothing here knows detokenizing, stop strings or the relay: `output.py` turns the sampled tokens into text and
says when a sequence is done. Nothing here imports Django; one thread drives a scheduler.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Sequence as Tokens
from dataclasses import dataclass, field
from typing import Any

from inference.engine.batch import BatchModel, KVCacheFull, SavedKV, SlotWork

DEFAULT_CHUNK_TOKENS = 512
MIN_SAVED_TOKENS = 32  # a cached prefix shorter than this is not worth a copy (to host memory, or another slot)


def _held(result: int | None, asked: int) -> int:
    """What a slot operation says the slot holds (None: what was asked)."""
    return asked if result is None else result


def common_prefix(a: Tokens[int], b: Tokens[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(eq=False)
class Sequence:
    """One sequence the scheduler runs: `tokens` is what its slot must hold before the next token is sampled
    (the prompt, then each sampled token appended as it comes)."""

    id: str
    user: str
    tokens: list[int]
    sampler: Any
    n_prompt: int = 0  # tokens[:n_prompt] is the prompt (and, on a resumed job, the output already sent)
    group: str = ""  # the choices of one request share it: their prompt is read once, however short
    slot: int | None = None
    computed: int = 0  # tokens[:computed] are in the slot's KV cache
    cached_tokens: int = 0  # of the prompt, reused from the cache at admission
    admitted_at: float = 0.0

    @property
    def prefilling(self) -> bool:
        return len(self.tokens) - self.computed > 1


@dataclass
class StepOutput:
    sequence: Sequence
    token: int
    logprobs: dict[str, Any] | None = None


@dataclass
class _Slot:
    tokens: list[int] = field(default_factory=list)  # what its KV cache holds
    sequence: Sequence | None = None
    last_used: float = 0.0


class PrefixStore:
    """Conversations pushed out of their slots, kept in host memory up to `budget_bytes`, least recently used
    out first."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[int, ...], SavedKV] = OrderedDict()

    @property
    def used_bytes(self) -> int:
        return sum(saved.nbytes for saved in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tokens: Tokens[int], saved: SavedKV) -> None:
        key = tuple(tokens[: saved.n_tokens])
        if saved.nbytes > self.budget_bytes:
            return
        # An entry that is a prefix of the new one is worth nothing more.
        for other in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
            del self._entries[other]
        self._entries[key] = saved
        while self.used_bytes > self.budget_bytes:
            self._entries.popitem(last=False)

    def best(self, tokens: Tokens[int]) -> tuple[tuple[int, ...] | None, int]:
        """The entry sharing the longest prefix with `tokens`, and that length."""
        best_key, best_length = None, 0
        for key in self._entries:
            length = common_prefix(key, tokens)
            if length > best_length:
                best_key, best_length = key, length
        return best_key, best_length

    def take(self, key: tuple[int, ...]) -> SavedKV:
        """The saved copy (it stays stored and becomes the most recently used)."""
        self._entries.move_to_end(key)
        return self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


class Scheduler:
    def __init__(self, model: BatchModel, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS, cache_bytes: int = 0,
                 slots: int | None = None):
        self.model = model
        self.n_slots = min(slots or model.n_slots, model.n_slots)
        self.chunk_tokens = max(1, chunk_tokens)
        self.prefix_store = PrefixStore(cache_bytes)
        self._slots = [_Slot() for _ in range(self.n_slots)]
        self._waiting: OrderedDict[str, deque[Sequence]] = OrderedDict()  # user -> their sequences, in order
        self._running: dict[str, Sequence] = {}
        self.steps = 0
        self.peak_batch = 0

    # -- the queue ---------------------------------------------------------------------------------

    def add(self, sequence: Sequence) -> None:
        if len(sequence.tokens) == 0:
            raise ValueError("a sequence needs at least one token")
        self._waiting.setdefault(sequence.user, deque()).append(sequence)

    def _requeue_first(self, sequence: Sequence) -> None:
        self._waiting[sequence.user] = self._waiting.get(sequence.user) or deque()
        self._waiting[sequence.user].appendleft(sequence)
        self._waiting.move_to_end(sequence.user, last=False)

    def _next_waiting(self) -> Sequence | None:
        """The first sequence of the user whose turn it is; that user goes to the back of the line."""
        while self._waiting:
            user, queue = next(iter(self._waiting.items()))
            if not queue:
                del self._waiting[user]
                continue
            sequence = queue.popleft()
            if queue:
                self._waiting.move_to_end(user)
            else:
                del self._waiting[user]
            return sequence
        return None

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    @property
    def running(self) -> int:
        return len(self._running)

    def has_work(self) -> bool:
        return bool(self._running) or self.waiting > 0

    def sequences(self) -> list[Sequence]:
        return list(self._running.values()) + [s for queue in self._waiting.values() for s in queue]

    # -- taking sequences out ------------------------------------------------------------------------

    def finish(self, sequence_id: str) -> Sequence | None:
        """Take a sequence out (done, cancelled or failed). Its slot keeps what it computed, as a cache for the
        conversation's next turn. Returns it (None when unknown)."""
        sequence = self._running.pop(sequence_id, None)
        if sequence is not None:
            slot = self._slots[sequence.slot]
            slot.tokens = sequence.tokens[: sequence.computed]
            slot.sequence = None
            slot.last_used = time.monotonic()
            return sequence
        for user, queue in list(self._waiting.items()):
            for waiting in queue:
                if waiting.id == sequence_id:
                    queue.remove(waiting)
                    if not queue:
                        del self._waiting[user]
                    return waiting
        return None

    abort = finish

    def clear(self) -> list[Sequence]:
        """Take every sequence out (the worker hands them over or fails them) and forget every cache."""
        sequences = self.sequences()
        for sequence in sequences:
            self.finish(sequence.id)
        for index, slot in enumerate(self._slots):
            self.model.kv_trim(index, 0)
            slot.tokens = []
        self.prefix_store.clear()
        return sequences

    # -- one step ------------------------------------------------------------------------------------

    def step(self) -> list[StepOutput]:
        """Admit what fits, run one batch, return the tokens sampled in it."""
        self._admit()
        if not self._running:
            return []
        while True:
            work, members = self._batch()
            try:
                sampled = self.model.decode(work)
            except KVCacheFull:
                if not self._free_room():
                    raise
                continue
            break
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(work))
        outputs = []
        by_slot = {s.slot: s for s in sampled}
        for item, sequence in zip(work, members, strict=True):
            sequence.computed += len(item.tokens)
            self._slots[item.slot].tokens.extend(item.tokens)
            if item.sample:
                result = by_slot[item.slot]
                sequence.tokens.append(result.token)
                outputs.append(StepOutput(sequence, result.token, result.logprobs))
        return outputs

    def _batch(self) -> tuple[list[SlotWork], list[Sequence]]:
        """Every decoding sequence's last token, then prompt chunks in admission order within the budget."""
        work, members = [], []
        budget = self.chunk_tokens
        running = sorted(self._running.values(), key=lambda s: s.admitted_at)
        for sequence in running:
            if not sequence.prefilling:
                work.append(SlotWork(sequence.slot, sequence.tokens[sequence.computed :], sequence.computed,
                                     True, sequence.sampler))
                members.append(sequence)
        for sequence in running:
            if sequence.prefilling and budget > 0:
                pending = sequence.tokens[sequence.computed :]
                chunk = pending[:budget]
                budget -= len(chunk)
                work.append(SlotWork(sequence.slot, chunk, sequence.computed, len(chunk) == len(pending),
                                     sequence.sampler))
                members.append(sequence)
        return work, members

    # -- admission and the prefix cache -----------------------------------------------------------------

    def _free_slots(self) -> list[int]:
        return [i for i, slot in enumerate(self._slots) if slot.sequence is None]

    def _admit(self) -> None:
        deferred = []
        while self.waiting:
            free = self._free_slots()
            if not free:
                break
            sequence = self._next_waiting()
            if self._shares_a_prompt_being_read(sequence):
                deferred.append(sequence)  # next step, it copies that prefix instead of reading it again
                continue
            self._place(sequence, free)
        for sequence in reversed(deferred):
            self._requeue_first(sequence)

    def _shares_a_prompt_being_read(self, sequence: Sequence) -> bool:
        """Whether a running sequence is still reading a prompt that this one shares: another choice of the same
        request (its group), or a long common prefix (the same long system prompt)."""
        for running in self._running.values():
            if not running.prefilling:
                continue
            if sequence.group and running.group == sequence.group:
                return True
            if common_prefix(running.tokens, sequence.tokens) >= MIN_SAVED_TOKENS:
                return True
        return False

    def _place(self, sequence: Sequence, free: list[int]) -> None:
        """Put a sequence in the free slot that serves it best, reusing the longest cached prefix."""
        usable = len(sequence.tokens) - 1  # at least one token is computed anew, to sample from

        def reuse_of(index: int) -> int:
            return min(common_prefix(self._slots[index].tokens, sequence.tokens), usable)

        def choice(index: int) -> tuple:
            """A slot's prefix is worth reusing when it keeps at least as much as it discards (or a long run);
            else a slot beside the running ones where the backend batches only adjacent slots together (one
            forward pass a step, not one per run of slots: 4 sequences in slots 0, 2, 5, 7 decode as slowly as
            one), then an empty slot, then the least recently used."""
            reuse, held = reuse_of(index), len(self._slots[index].tokens)
            gain = reuse if reuse >= held - reuse or reuse >= MIN_SAVED_TOKENS else 0
            return gain, self._running_beside(index), -(held - reuse), -self._slots[index].last_used

        target = max(free, key=choice)
        reuse = reuse_of(target) if choice(target)[0] else 0
        copy_source, copy_length = self._best_running_prefix(sequence)
        beside = [i for i in free if self._running_beside(i)]
        if reuse > copy_length and beside and not self._running_beside(target):
            # Its cache lies apart from the running slots: copied beside them (one whole-stream copy, a few ms)
            # it costs less than a forward pass more at every step while both run.
            copy_source, copy_length = target, reuse
            target = max(beside, key=lambda i: (self._running_beside(i), -len(self._slots[i].tokens),
                                                -self._slots[i].last_used))
            reuse = 0
        stored_key, stored_length = self.prefix_store.best(sequence.tokens)
        copy_length, stored_length = min(copy_length, usable), min(stored_length, usable)
        if max(copy_length, stored_length) > reuse:
            # Taken before the slot's own cache is saved: saving it may drop the stored entry (a prefix of it).
            saved = self.prefix_store.take(stored_key) if stored_length > copy_length else None
            self._save_if_worth(target, keep=0)
            if saved is None:
                reuse = _held(self.model.kv_copy(copy_source, target, copy_length), copy_length)
                self._slots[target].tokens = list(sequence.tokens[:reuse])
            else:
                held = _held(self.model.kv_restore(target, saved), saved.n_tokens)
                self._slots[target].tokens = list(stored_key[:held])
                reuse = min(stored_length, held)
        else:
            self._save_if_worth(target, keep=reuse)
        reuse = _held(self.model.kv_trim(target, reuse), reuse)
        slot = self._slots[target]
        del slot.tokens[reuse:]
        slot.sequence = sequence
        slot.last_used = time.monotonic()
        sequence.slot, sequence.computed = target, reuse
        sequence.cached_tokens = min(reuse, sequence.n_prompt) if sequence.n_prompt else reuse
        sequence.admitted_at = sequence.admitted_at or time.monotonic()
        self._running[sequence.id] = sequence

    def _running_beside(self, index: int) -> int:
        """How many of a slot's two neighbours run a sequence, where that keeps one forward pass a step."""
        if not getattr(self.model, "batches_adjacent_slots_only", False):
            return 0
        return sum(1 for j in (index - 1, index + 1)
                   if 0 <= j < len(self._slots) and self._slots[j].sequence is not None)

    def _best_running_prefix(self, sequence: Sequence) -> tuple[int | None, int]:
        """The running slot with the longest prefix of the sequence worth a copy: another choice of the same
        request, or a long run (a backend may copy a whole KV stream for it: llama.cpp)."""
        best, length = None, 0
        for index, slot in enumerate(self._slots):
            if slot.sequence is None:
                continue
            shared = common_prefix(slot.tokens, sequence.tokens)
            sibling = bool(sequence.group) and slot.sequence.group == sequence.group
            if shared > length and (sibling or shared >= MIN_SAVED_TOKENS):
                best, length = index, shared
        return best, length

    def _save_if_worth(self, slot_index: int, keep: int) -> None:
        """Before a slot's cache is cut to `keep` tokens, copy the whole of it to host memory when the part
        that would be lost is worth keeping."""
        tokens = self._slots[slot_index].tokens
        if self.prefix_store.budget_bytes <= 0 or len(tokens) - keep < MIN_SAVED_TOKENS:
            return
        key, length = self.prefix_store.best(tokens)
        if length >= len(tokens):
            return  # already stored
        saved = self.model.kv_save(slot_index, len(tokens))
        if saved.n_tokens:
            self.prefix_store.put(tokens, saved)

    def _free_room(self) -> bool:
        """Make room in a full KV cache: empty the least recently used cached slot (saved to host memory
        first), else send the newest running sequence back to the queue. False when nothing can be freed."""
        cached = [i for i, slot in enumerate(self._slots) if slot.sequence is None and slot.tokens]
        if cached:
            index = min(cached, key=lambda i: self._slots[i].last_used)
            self._save_if_worth(index, keep=0)
            self.model.kv_trim(index, 0)
            self._slots[index].tokens = []
            return True
        if len(self._running) <= 1:
            return False
        newest = max(self._running.values(), key=lambda s: s.admitted_at)
        self._running.pop(newest.id)
        slot = self._slots[newest.slot]
        self.model.kv_trim(newest.slot, 0)
        slot.tokens, slot.sequence = [], None
        newest.slot, newest.computed = None, 0
        self._requeue_first(newest)
        return True

    # -- what the worker reports -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "slots": self.n_slots,
            "peak_batch": self.peak_batch,  # the most sequences one step has run together
            "running": self.running,
            "waiting": self.waiting,
            "cached_slots": sum(1 for s in self._slots if s.sequence is None and s.tokens),
            "host_cache_entries": len(self.prefix_store),
            "host_cache_bytes": self.prefix_store.used_bytes,
        }
