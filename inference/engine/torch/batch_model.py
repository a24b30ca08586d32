"""The torch engine as a `BatchModel` (inference/engine/batch.py): a KV cache with one row per slot, and a
`decode` that runs several slots' new tokens together, each at its own position.

The KV cache holds `n_slots` rows of `n_ctx` positions. A slot's sequence is its row's positions
[0, length); `lengths` is the only bookkeeping: the attention masks let a row's queries see only its own
positions up to their own, so trimming a slot is forgetting its length, and whatever a longer sequence left
beyond it is never read. `kv_capacity` is n_slots x n_ctx, or `spec.kv_tokens` when that is smaller: then it
bounds the positions all slots hold together (as llama.cpp's shared cells do), so the scheduler frees cached
slots the same way on every backend; the rows stay allocated at n_ctx each (`memory_bytes` counts them).

One `decode(work)`: the items bringing one token (decode steps, and one-token prompts) run in ONE forward pass,
with per-row positions and cache rows; items bringing several tokens (prompt chunks) run as passes of their
own, chunks of equal length sharing one. Then each item that asks is sampled, in the order of the work, with
its sequence's own sampler; the plain greedy ones take one argmax together.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from inference.engine.base import GenerationRequest, InvalidRequest
from inference.engine.batch import KVCacheFull, Sampled, SavedKV, SlotWork
from inference.engine.chat_template import ChatTemplate
from inference.engine.torch.generate import decode_one_token, prefill_rows
from inference.engine.torch.loader import LoadedWeights
from inference.engine.torch.models.layers import KVCache
from inference.engine.torch.sampler import TorchSampler, sample_each
from inference.engine.torch.tokenizer import TextTokenizer


class TorchBatchModel:
    def __init__(self, weights: LoadedWeights, tokenizer: TextTokenizer, chat_template: ChatTemplate, *,
                 n_ctx: int, n_slots: int, kv_tokens: int = 0):
        if n_slots < 1 or n_ctx < 1:
            raise ValueError(f"a model needs at least one slot and one position, not {n_slots} x {n_ctx}")
        self.weights = weights
        self.model = weights.model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.n_slots = n_slots
        self.n_ctx = n_ctx
        self.kv_capacity = n_slots * n_ctx if kv_tokens <= 0 else min(kv_tokens, n_slots * n_ctx)
        args = weights.args
        self.cache = KVCache(args.n_layers, n_slots, args.n_kv_heads, n_ctx, args.head_dim,
                             dtype=weights.dtype, device=weights.device)
        self.lengths = [0] * n_slots  # slot i's sequence is its row's positions [0, lengths[i])
        weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.memory_bytes = weight_bytes + self.cache.nbytes()
        self.eog_ids = frozenset(tokenizer.stop_ids)

    # -- text ---------------------------------------------------------------------------------------

    def render_prompt(self, request: GenerationRequest) -> str:
        if (request.prompt is None) == (request.messages is None):
            raise InvalidRequest("Give exactly one of messages or prompt.")
        if request.prompt is not None:
            return request.prompt
        return self.chat_template.render(request.messages, add_generation_prompt=True, tools=request.tools)

    def tokenize(self, text: str) -> list[int]:
        """Special tokens in the text become their ids; BOS is added only when the text lacks it."""
        return self.tokenizer.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    # -- sampling and decoding ----------------------------------------------------------------------

    def sampler(self, request: GenerationRequest, history: Sequence[int], n_prompt: int) -> TorchSampler:
        """Our own sampler with the request's parameters and a random stream seeded from its seed. The torch
        engine has no grammars and no log probabilities (its declared capabilities): asked for them, it says so."""
        if request.structure is not None:
            raise InvalidRequest("The torch engine cannot constrain output to a schema; use the llamacpp backend.")
        if request.logprobs is not None:
            raise InvalidRequest("The torch engine does not return log probabilities; use the llamacpp backend.")
        return TorchSampler(request.sampling, history)

    def decode(self, work: list[SlotWork]) -> list[Sampled]:
        logits = self.logits(work)
        asked = [i for i, item in enumerate(work) if item.sample]
        tokens = sample_each([logits[i] for i in asked], [work[i].sampler for i in asked])
        return [Sampled(work[i].slot, token) for i, token in zip(asked, tokens, strict=True)]

    def logits(self, work: list[SlotWork]) -> list[torch.Tensor]:
        """Run every item's tokens into its slot (what `decode` does before sampling); the logits (V,) after
        each item's last token, in the order of the work. Raises KVCacheFull, changing nothing."""
        new_lengths = self._lengths_after(work)
        logits: list[torch.Tensor | None] = [None] * len(work)
        try:
            for indices in self._passes(work):
                for index, row in zip(indices, self._run_pass([work[i] for i in indices]), strict=True):
                    logits[index] = row
        except BaseException:
            for item in work:  # what was written from `start` on may be half done: the slot keeps what came before
                self.lengths[item.slot] = min(self.lengths[item.slot], item.start)
            raise
        self.lengths = new_lengths
        return logits

    def _lengths_after(self, work: list[SlotWork]) -> list[int]:
        """Every slot's length once the work is done; KVCacheFull when it would not fit."""
        lengths = list(self.lengths)
        slots = [item.slot for item in work]
        if len(set(slots)) != len(slots):
            raise ValueError(f"a slot takes one item per decode, not {slots}")
        for item in work:
            if not 0 <= item.slot < self.n_slots:
                raise ValueError(f"slot {item.slot} does not exist; this model has {self.n_slots}")
            if not item.tokens:
                raise ValueError(f"the work for slot {item.slot} brings no token")
            if not 0 <= item.start <= lengths[item.slot]:
                raise ValueError(f"slot {item.slot} holds {lengths[item.slot]} positions; its new tokens cannot "
                                 f"start at {item.start}")
            lengths[item.slot] = item.start + len(item.tokens)
            if lengths[item.slot] > self.n_ctx:
                raise KVCacheFull(f"slot {item.slot} would hold {lengths[item.slot]} positions; a slot holds "
                                  f"{self.n_ctx}")
        if sum(lengths) > self.kv_capacity:
            raise KVCacheFull(f"the slots would hold {sum(lengths)} positions together; the cache holds "
                              f"{self.kv_capacity}")
        return lengths

    @staticmethod
    def _passes(work: list[SlotWork]) -> list[list[int]]:
        """Indices into `work`, one list per forward pass: every one-token item together, then the longer
        items grouped by length; within a pass by slot, so that consecutive slots read their rows unstrided."""
        by_length: dict[int, list[int]] = defaultdict(list)
        for index, item in enumerate(work):
            by_length[len(item.tokens)].append(index)
        return [sorted(indices, key=lambda i: work[i].slot) for _, indices in sorted(by_length.items())]

    def _run_pass(self, items: list[SlotWork]) -> torch.Tensor:
        """One forward pass over items bringing the same number of tokens; logits (B, V)."""
        rows, starts = [item.slot for item in items], [item.start for item in items]
        if len(items[0].tokens) == 1:
            return decode_one_token(self.model, self.cache, [item.tokens[0] for item in items], starts, rows)
        return prefill_rows(self.model, self.cache, [item.tokens for item in items], rows=rows, starts=starts)

    # -- the slots, for the prefix cache --------------------------------------------------------------

    def kv_trim(self, slot: int, keep: int) -> None:
        """Nothing is erased: the masks never let a row see past its length."""
        self.lengths[slot] = max(0, min(self.lengths[slot], keep))

    def kv_copy(self, source: int, target: int, n_tokens: int) -> None:
        if not 0 <= n_tokens <= self.lengths[source]:
            raise ValueError(f"slot {source} holds {self.lengths[source]} positions, not {n_tokens}")
        if source != target:
            self.cache.copy_row(source, target, n_tokens)
        self.lengths[target] = n_tokens

    def kv_save(self, slot: int, n_tokens: int) -> SavedKV:
        if not 0 <= n_tokens <= self.lengths[slot]:
            raise ValueError(f"slot {slot} holds {self.lengths[slot]} positions, not {n_tokens}")
        keys, values = self.cache.save_row(slot, n_tokens)  # each (n_layers, Hkv, n_tokens, D), CPU
        nbytes = keys.numel() * keys.element_size() + values.numel() * values.element_size()
        return SavedKV(data=(keys, values), nbytes=nbytes, n_tokens=n_tokens)

    def kv_restore(self, slot: int, saved: SavedKV) -> None:
        if saved.n_tokens > self.n_ctx:
            raise ValueError(f"{saved.n_tokens} saved positions do not fit a slot of {self.n_ctx}")
        self.lengths[slot] = 0
        keys, values = saved.data
        self.cache.restore_row(slot, keys, values)
        self.lengths[slot] = saved.n_tokens

    def close(self) -> None:
        on_cuda = self.cache is not None and self.cache.device.type == "cuda"
        self.model = self.weights = self.cache = None
        self.lengths = [0] * self.n_slots
        if on_cuda:
            torch.cuda.empty_cache()
