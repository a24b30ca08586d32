"""The llama.cpp backend: a GGUF model as a `BatchModel` (inference/engine/batch.py), on llama-cpp-python's
low-level API.

One llama.cpp context holds every slot: `n_seq_max` = slots sequences, each in a KV stream of its own of `n_ctx`
cells (llama.cpp's `kv_unified = false`, as llama-server runs its slots). The KV memory is the pool
(HEARTH_KV_TOKENS, inference/specs.py) cut into equal parts, so a sequence's context is min(the model's, pool /
slots), as llama-server's `-c` / `-np`. Why not one unified cache that all slots share: llama.cpp's attention spans
every used cell of a unified cache, every slot's, so each sequence pays for all the others' histories (measured in
docs/benchmarks.md: two alternating 10-turn chats got slower with every turn; with streams they stay flat).

`decode` puts every slot's new tokens in one `llama_batch` (seq id = slot), in slot order (llama.cpp splits a batch
of several streams into physical batches of consecutive increasing sequence ids, so a batch out of order would
become many), runs one `llama_decode`, and samples each asking slot with its own llama_sampler chain
(llamacpp_sampling.py), answering in the work's order. The token loop, detokenizing and stop strings live above, in
output.py.

A prefix copied between slots is a whole-stream copy (`llama_memory_seq_cp` across streams copies the stream and
applies it at the next `llama_decode`), cut back to the prefix; a copy still pending is not saved (llama.cpp would
save the stream as it was). A partial save is a whole save, cut back on restore.

Batch size: `n_batch` is the whole cache, so every batch the cache can take goes to llama.cpp in one `llama_decode`
call, which finds room for all of it before computing anything: a batch that does not fit changes nothing. llama.cpp
cuts it into physical batches of `n_ubatch` = one prompt chunk plus one token per slot (a scheduler step is one).
Logits are kept only for the positions that sample (`n_outputs_max` = one per sequence).

Sliding-window attention (Gemma 2/3 and others): the SWA layers keep only the last `n_swa` positions of a sequence
(`swa_full` option: keep them all, at the memory cost of full-size caches), so a slot cannot always be cut back to an
earlier position: the window before the cut may be gone. `kv_trim`, `kv_copy` and `kv_restore` check llama.cpp's
`llama_memory_seq_pos_min` as llama-server does and, when the window is gone, empty the slot and say so (they return
how many positions the slot holds), and the scheduler recomputes. Same output with or without the cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import weakref
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from inference.engine.backends import LLAMACPP
from inference.engine.base import BackendUnavailable, GenerationRequest, ModelSpec
from inference.engine.batch import KVCacheFull, Sampled, SavedKV, SlotWork
from inference.engine.chat_template import conventional_template, render_chat_with_tools
from inference.engine.llamacpp_sampling import (
    LlamaSampler,
    build_sampler,
    log_softmax,
    logits_at,
    logprob_entry,
)

if TYPE_CHECKING:
    from inference.engine.embeddings import LlamaCppEmbeddingModel

GGML_TYPE_F32 = 0
ALL_LAYERS = 0x7FFFFFFF  # n_gpu_layers -1: llama.cpp offloads every layer the device can take
PROMPT_CHUNK_TOKENS = 512  # the scheduler's default prompt chunk (scheduler.DEFAULT_CHUNK_TOKENS)
GGML_LOG_LEVEL_ERROR = 4


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class LlamaCppBackend:
    name = LLAMACPP.name
    capabilities = LLAMACPP.capabilities  # batching, grammars, logprobs and embeddings

    def unavailable_reason(self) -> str | None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as error:
            return f"llama-cpp-python is not installed ({error}): {LLAMACPP.install_hint}"
        except Exception as error:  # a broken install (a syntax error, a missing shared library) is as unusable
            return (f"llama-cpp-python is installed but fails to import ({type(error).__name__}: {error}): "
                    f"{LLAMACPP.install_hint}")
        return None

    def load(self, spec: ModelSpec) -> LlamaCppModel:
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        if spec.format != "gguf":
            raise BackendUnavailable(
                f"llama.cpp runs GGUF files; this model is {spec.format}. Convert it to GGUF first "
                "(python manage.py convert_model ID --to gguf) or choose the torch backend."
            )
        return LlamaCppModel(spec)

    def load_embedding_model(self, spec: ModelSpec) -> LlamaCppEmbeddingModel:
        """A separate context with embeddings on (embeddings.py), for embedding jobs."""
        from inference.engine.embeddings import LlamaCppEmbeddingModel  # it imports this module

        return LlamaCppEmbeddingModel(spec)


# ---------------------------------------------------------------------------------------------------------
# Loading: shared with the embedding contexts (embeddings.py).

_recent_errors: deque[str] = deque(maxlen=8)  # llama.cpp's last error lines, for load failures
_log_callback = None  # kept referenced: llama.cpp calls it for as long as the process lives


def quiet_llama_logs() -> None:
    """llama.cpp logs every load and context step; keep only its errors (on stderr and for our messages)."""
    global _log_callback
    import llama_cpp

    if _log_callback is not None:
        return

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, _user_data) -> None:
        if level == GGML_LOG_LEVEL_ERROR:
            line = text.decode("utf-8", errors="replace")
            _recent_errors.append(line.strip())
            sys.stderr.write(line)

    _log_callback = on_log
    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()


def load_failure(spec: ModelSpec, what: str = "") -> BackendUnavailable:
    detail = "; ".join(line for line in _recent_errors if line) or "no reason given"
    _recent_errors.clear()
    return BackendUnavailable(
        f"llama.cpp could not load {os.path.basename(spec.path)}{what} ({detail}). The architecture may be newer "
        "than this llama.cpp build (upgrade llama-cpp-python), the file may be damaged, or it may not fit "
        "in memory (try a smaller quantization)."
    )


def load_weights(spec: ModelSpec, *, vocab_only: bool = False) -> tuple[int, Any]:
    """(llama_model pointer, the llama_model_params it was loaded with). Free with llama_model_free."""
    import llama_cpp

    quiet_llama_logs()
    if not os.path.isfile(spec.path):
        _recent_errors.append(f"no file at {spec.path}")
        raise load_failure(spec)
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = ALL_LAYERS if spec.n_gpu_layers < 0 else spec.n_gpu_layers
    params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP  # weights mapped from the file, shared between processes
    params.vocab_only = vocab_only
    model = llama_cpp.llama_model_load_from_file(os.fsencode(spec.path), params)
    if not model:
        raise load_failure(spec)
    return model, params


def model_metadata(model: int, key: str) -> str | None:
    import llama_cpp

    buffer = ctypes.create_string_buffer(256)
    size = llama_cpp.llama_model_meta_val_str(model, key.encode(), buffer, len(buffer))
    if size < 0:
        return None
    if size >= len(buffer):
        buffer = ctypes.create_string_buffer(size + 1)
        llama_cpp.llama_model_meta_val_str(model, key.encode(), buffer, len(buffer))
    return buffer.value.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------------
# The batch and the KV cells.


class TokenBatch:
    """One llama_batch, allocated once: its arrays are numpy arrays filled in slices for each decode, each token
    with one sequence id (its slot)."""

    def __init__(self, capacity: int):
        import llama_cpp
        import numpy as np

        self.capacity = capacity
        self.tokens = np.zeros(capacity, dtype=np.int32)  # (capacity,)
        self.positions = np.zeros(capacity, dtype=np.int32)
        self.seq_ids = np.zeros(capacity, dtype=np.int32)
        self.n_seq_ids = np.ones(capacity, dtype=np.int32)  # one sequence per token
        self.outputs = np.zeros(capacity, dtype=np.int8)  # 1: keep this position's logits
        self.ramp = np.arange(capacity, dtype=np.int32)  # 0, 1, 2, ...: positions are start + ramp
        # llama_batch.seq_id is an array of pointers, token i's pointing at seq_ids[i]
        self.seq_id_pointers = (self.seq_ids.ctypes.data + 4 * np.arange(capacity, dtype=np.uint64)).astype(np.uint64)

        def pointer(array, ctype):
            return array.ctypes.data_as(ctypes.POINTER(ctype))

        self.struct = llama_cpp.llama_batch(
            n_tokens=0,
            token=pointer(self.tokens, llama_cpp.llama_token),
            embd=None,
            pos=pointer(self.positions, llama_cpp.llama_pos),
            n_seq_id=pointer(self.n_seq_ids, ctypes.c_int32),
            seq_id=ctypes.cast(self.seq_id_pointers.ctypes.data, ctypes.POINTER(ctypes.POINTER(llama_cpp.llama_seq_id))),
            logits=pointer(self.outputs, ctypes.c_int8),
        )

    def fill(self, work: list[SlotWork]) -> list[int]:
        """Put the work in the batch; the batch index of each sampling item's last token, in order."""
        import numpy as np

        at, sample_at = 0, []
        for item in work:
            n = len(item.tokens)
            end = at + n
            if n == 1:  # a decoding sequence: scalar writes, no temporary arrays
                self.tokens[at] = item.tokens[0]
                self.positions[at] = item.start
                self.seq_ids[at] = item.slot
                self.outputs[at] = item.sample
            else:
                self.tokens[at:end] = item.tokens
                np.add(self.ramp[:n], item.start, out=self.positions[at:end])
                self.seq_ids[at:end] = item.slot
                self.outputs[at:end] = 0
                self.outputs[end - 1] = item.sample
            if item.sample:
                sample_at.append(end - 1)
            at = end
        self.struct.n_tokens = at
        return sample_at


def free_context_and_weights(owner: Any) -> None:
    """Free `owner._context` and `owner._model` (llama.cpp handles) and forget them: safe to call twice, and on an
    object whose constructor failed half-way."""
    import llama_cpp

    context, owner._context = getattr(owner, "_context", None), None
    if context:
        llama_cpp.llama_free(context)
    model, owner._model = getattr(owner, "_model", None), None
    if model:
        llama_cpp.llama_model_free(model)


def vocab_tokenize(vocab, text: str, *, add_bos: bool, special: bool) -> list[int]:
    """llama_tokenize with a buffer that grows to what the text needs."""
    import llama_cpp

    data = text.encode("utf-8")
    room = len(data) + 8
    while True:
        ids = (llama_cpp.llama_token * room)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), ids, room, add_bos, special)
        if n >= 0:
            return ids[:n]
        room = -n


class KVCells:
    """How many positions (cells of its own stream) each slot holds."""

    def __init__(self, n_slots: int):
        self.slots = [0] * n_slots

    @property
    def used(self) -> int:
        return sum(self.slots)

    def held(self, slot: int) -> int:
        return self.slots[slot]

    def extend(self, slot: int, n: int) -> None:
        self.slots[slot] += n

    def trim(self, slot: int, keep: int) -> None:
        self.slots[slot] = min(self.slots[slot], keep)


# ---------------------------------------------------------------------------------------------------------
# The loaded model.


class LlamaCppModel:
    """A GGUF model in one llama.cpp context with `n_slots` sequences, a KV stream each (see the module doc)."""

    # With a stream per sequence llama.cpp puts only consecutive sequence ids in one physical batch
    # (llama_batch_allocr::split_equal, "sequential"): sequences in slots 0, 2, 5, 7 take four forward passes.
    batches_adjacent_slots_only = True

    def __init__(self, spec: ModelSpec):
        import llama_cpp

        self.spec = spec
        self._model, self.model_params = load_weights(spec)
        self._context = None
        try:
            self._vocab = llama_cpp.llama_model_get_vocab(self._model)
            self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
            trained = llama_cpp.llama_model_n_ctx_train(self._model)
            wanted = min(spec.n_ctx, trained) if trained > 0 else spec.n_ctx
            self.n_slots = max(1, spec.n_slots)
            pool = spec.kv_tokens or wanted * self.n_slots
            per_slot = max(1, min(wanted, pool // self.n_slots))
            self.context_params = self._context_params(spec, per_slot)
            self._context = llama_cpp.llama_init_from_model(self._model, self.context_params)
            if not self._context:
                raise load_failure(spec, f" with a {per_slot}-token KV cache for each of {self.n_slots} sequences")
            self.n_ctx = min(per_slot, llama_cpp.llama_n_ctx_seq(self._context))  # llama.cpp pads to 256s
            self.kv_capacity = self.n_ctx * self.n_slots
            self._memory = llama_cpp.llama_get_memory(self._context)
            self._n_swa = max(1, llama_cpp.llama_model_n_swa(self._model))
            self._batch = TokenBatch(llama_cpp.llama_n_batch(self._context))
            self._cells = KVCells(self.n_slots)
            self._pending_copies: set[int] = set()  # slots whose stream copy llama.cpp applies at the next decode
            self._pieces: dict[int, bytes] = {}
            self._samplers: weakref.WeakSet[LlamaSampler] = weakref.WeakSet()  # closed with the model
            self.eog_ids = frozenset(t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t))
            self.bos_text = self._token_text(llama_cpp.llama_vocab_bos(self._vocab))
            self.eos_text = self._token_text(llama_cpp.llama_vocab_eos(self._vocab))
            self.memory_bytes = self._memory_estimate(llama_cpp.llama_n_ctx(self._context))
            architecture = spec.architecture or model_metadata(self._model, "general.architecture") or ""
            self.chat_template = spec.chat_template or conventional_template(architecture)[0]
        except BaseException:
            self.close()
            raise

    def _context_params(self, spec: ModelSpec, cells_per_slot: int):
        import llama_cpp

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = cells_per_slot * self.n_slots
        params.n_seq_max = self.n_slots
        params.kv_unified = False  # a stream per slot (see the module doc)
        params.n_batch = params.n_ctx  # the whole cache: one llama_decode per batch (see the module doc)
        params.n_ubatch = min(params.n_ctx, PROMPT_CHUNK_TOKENS + self.n_slots)
        params.n_outputs_max = self.n_slots  # logits of at most one position per sequence
        params.n_threads = params.n_threads_batch = spec.n_threads or default_threads()
        params.swa_full = bool(spec.options.get("swa_full", False))
        params.no_perf = True
        if spec.options.get("f32_kv_cache"):
            params.type_k = params.type_v = GGML_TYPE_F32
        return params

    def _memory_estimate(self, cells: int) -> int:
        """Weights, KV cache (every layer counted at full size) and the logits buffer, in bytes."""
        import llama_cpp

        model = self._model
        weights = int(llama_cpp.llama_model_size(model))
        arch = model_metadata(model, "general.architecture") or ""
        n_head = max(1, llama_cpp.llama_model_n_head(model))
        head_dim = llama_cpp.llama_model_n_embd(model) // n_head
        k_dim = int(model_metadata(model, f"{arch}.attention.key_length") or head_dim)
        v_dim = int(model_metadata(model, f"{arch}.attention.value_length") or head_dim)
        element = 4 if self.spec.options.get("f32_kv_cache") else 2
        per_cell = llama_cpp.llama_model_n_layer(model) * llama_cpp.llama_model_n_head_kv(model) * (k_dim + v_dim)
        logits = 4 * self.n_vocab * (self.n_slots + 1)
        return weights + per_cell * element * cells + logits

    # -- text ---------------------------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        import llama_cpp

        if token < 0:
            return ""
        return (llama_cpp.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", errors="replace")

    def render_prompt(self, request: GenerationRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        return render_chat_with_tools(self.chat_template, request.messages or [], bos_token=self.bos_text,
                                      eos_token=self.eos_text, add_generation_prompt=True, tools=request.tools)

    def tokenize(self, text: str) -> list[int]:
        """Special tokens parsed; BOS added (where the vocabulary wants one) unless the text starts with it."""
        add_bos = not (self.bos_text and text.startswith(self.bos_text))
        return vocab_tokenize(self._vocab, text, add_bos=add_bos, special=True)

    def piece(self, token: int) -> bytes:
        """The bytes of one token as it reads in running text (its leading space kept; control tokens empty)."""
        cached = self._pieces.get(token)
        if cached is None:
            import llama_cpp

            buffer = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
            if n < 0:
                buffer = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
            cached = self._pieces[token] = buffer.raw[:n]
        return cached

    def detokenize(self, ids: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in ids).decode("utf-8", errors="replace")

    # -- sampling and decoding -----------------------------------------------------------------------------

    def sampler(self, request: GenerationRequest, history: Sequence[int], n_prompt: int) -> LlamaSampler:
        sampler = build_sampler(self._vocab, self.n_vocab, self.n_ctx, request, history, n_prompt)
        self._samplers.add(sampler)
        return sampler

    def decode(self, work: list[SlotWork]) -> list[Sampled]:
        import llama_cpp

        self._check(work)
        in_slot_order = sorted(work, key=lambda item: item.slot)
        batch_index = dict(zip((id(item) for item in in_slot_order if item.sample), self._batch.fill(in_slot_order),
                               strict=True))
        status = llama_cpp.llama_decode(self._context, self._batch.struct)
        if status == 1:  # no room found: llama.cpp put the cache back as it was
            raise KVCacheFull(f"llama.cpp found no room for {self._batch.struct.n_tokens} tokens")
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        self._pending_copies.clear()
        for item in work:
            self._cells.extend(item.slot, len(item.tokens))
        sampled = []
        for item in (item for item in work if item.sample):
            index = batch_index[id(item)]
            sampler: LlamaSampler = item.sampler
            logprobs = self._log_probabilities(index) if sampler.top_logprobs is not None else None
            token = sampler.sample(self._context, index, self.n_vocab)
            entry = logprob_entry(logprobs, token, sampler.top_logprobs, self.piece) if logprobs is not None else None
            sampled.append(Sampled(item.slot, token, entry))
        return sampled

    def _check(self, work: list[SlotWork]) -> None:
        """Refuse what llama.cpp would refuse, before anything changes; KVCacheFull when the cells run out."""
        slots = set()
        for item in work:
            if not 0 <= item.slot < self.n_slots or item.slot in slots:
                raise ValueError(f"slot {item.slot}: each item needs its own slot in 0..{self.n_slots - 1}")
            if not item.tokens:
                raise ValueError(f"slot {item.slot}: an item needs at least one token")
            if item.start != self._cells.held(item.slot):
                raise ValueError(f"slot {item.slot} holds {self._cells.held(item.slot)} positions; the item starts at "
                                 f"{item.start}")
            if item.start + len(item.tokens) > self.n_ctx:
                raise KVCacheFull(f"slot {item.slot}: {item.start + len(item.tokens)} positions do not fit its "
                                  f"{self.n_ctx} cells")
            slots.add(item.slot)
        needed = sum(len(item.tokens) for item in work)
        if self._cells.used + needed > self.kv_capacity:
            raise KVCacheFull(f"{needed} new tokens do not fit: {self._cells.used} of {self.kv_capacity} cells in use")

    def _log_probabilities(self, index: int):
        return log_softmax(logits_at(self._context, index, self.n_vocab))

    # -- the slots' KV cache ----------------------------------------------------------------------------------

    def _usable(self, slot: int, n: int) -> bool:
        """Whether the slot holds positions 0..n-1 with all that position n attends to: a sliding window of
        n_swa positions needs n - n_swa + 1 onwards, and llama.cpp keeps every position from pos_min on."""
        import llama_cpp

        if n == 0:
            return True
        low = llama_cpp.llama_memory_seq_pos_min(self._memory, slot)
        high = llama_cpp.llama_memory_seq_pos_max(self._memory, slot)
        return high == n - 1 and 0 <= low <= max(0, n - self._n_swa + 1)

    def _empty(self, slot: int) -> int:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
        self._cells.trim(slot, 0)
        return 0

    def kv_trim(self, slot: int, keep: int) -> int:
        import llama_cpp

        keep = min(keep, self._cells.held(slot))
        if keep == 0:
            return self._empty(slot)
        if keep == self._cells.held(slot):
            return keep
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot, keep, -1) or not self._usable(slot, keep):
            return self._empty(slot)  # a recurrent state or a sliding window that cannot go back there
        self._cells.trim(slot, keep)
        return keep

    def kv_copy(self, source: int, target: int, n_tokens: int) -> int:
        """The source's first positions into the target: its whole stream copied, then cut (see the module doc);
        none (0) from a slot whose own copy is still pending."""
        import llama_cpp

        self._empty(target)
        n = min(n_tokens, self._cells.held(source))
        if n == 0 or source in self._pending_copies:
            return 0
        llama_cpp.llama_memory_seq_cp(self._memory, source, target, -1, -1)
        self._pending_copies.add(target)
        self._cells.extend(target, self._cells.held(source))
        return self.kv_trim(target, n)

    def kv_save(self, slot: int, n_tokens: int) -> SavedKV:
        """The slot's first positions in host memory: the whole sequence saved, to be cut back on restore; empty
        (n_tokens 0) while a copy into the slot is pending."""
        import llama_cpp

        n = min(n_tokens, self._cells.held(slot))
        if n == 0 or slot in self._pending_copies:
            return SavedKV(data=None, nbytes=0, n_tokens=0)
        size = llama_cpp.llama_state_seq_get_size(self._context, slot)
        data = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self._context, data, size, slot)
        if written != size:
            raise RuntimeError(f"llama.cpp saved {written} of {size} bytes of sequence {slot}")
        return SavedKV(data=data, nbytes=size, n_tokens=n)

    def kv_restore(self, slot: int, saved: SavedKV) -> int:
        import llama_cpp

        self._empty(slot)
        if saved.n_tokens == 0 or saved.n_tokens > self.n_ctx:
            return 0
        if not llama_cpp.llama_state_seq_set_data(self._context, saved.data, saved.nbytes, slot):
            return self._empty(slot)  # no room for it
        held = llama_cpp.llama_memory_seq_pos_max(self._memory, slot) + 1
        self._cells.extend(slot, held)
        return self.kv_trim(slot, saved.n_tokens) if held >= saved.n_tokens else self._empty(slot)

    # -- the end ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the samplers still open, the context (and its KV cache) and the weights; safe to call twice (the
        batch is numpy memory)."""
        for sampler in list(getattr(self, "_samplers", ())):
            sampler.close()
        free_context_and_weights(self)

    # `quietly` is bound here: at interpreter shutdown the module's globals (contextlib, llama_cpp) may be None.
    def __del__(self, quietly=contextlib.suppress) -> None:
        with quietly(Exception):
            self.close()
