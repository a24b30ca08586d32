"""The MLX backend: models in MLX format (or plain Hugging Face safetensors) run with mlx-lm, as a BatchModel.

MLX is the fast path on Apple silicon (Metal); the same code runs on Linux CPU with `mlx[cpu]`.
mlx and mlx-lm are optional, so they are imported lazily: this module imports fine without them and
`MlxBackend.unavailable_reason()` says how to install them.

`MlxBackend().load(spec)` returns an `MlxBatchModel` (the contract is `batch.py`'s `BatchModel`): mlx-lm's model
module over `spec.n_slots` slots of KV cache (`mlx_slots.py`). `decode` runs the slots that take one token in one
forward pass, each at its own position, and each prompt chunk in a pass of its own; every sequence samples with its
own `MlxSampler` (`mlx_sampling.py`). Detokenizing, stop strings and finish reasons are `output.py`'s.
Chat prompts are rendered by our sandboxed `chat_template`, never the tokenizer's own renderer, and no model's own
code is ever run.
"""

from __future__ import annotations

import gc
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.engine.backends import MLX
from inference.engine.base import (
    BackendUnavailable,
    GenerationRequest,
    InvalidRequest,
    ModelRefused,
    ModelSpec,
)
from inference.engine.batch import KVCacheFull, Sampled, SavedKV, SlotWork
from inference.engine.chat_template import ChatTemplate, render_chat_with_tools
from inference.engine.formats import read_hf_config

INSTALL_HINT = MLX.install_hint
_MODEL_TYPE = re.compile(r"^[a-z0-9_]+$")


def mlx_import_error() -> str | None:
    """None when mlx and mlx-lm import, else the import error as text."""
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: mlx present but its native library (mlx-cpu) is not
        return f"{type(exc).__name__}: {exc}"
    return None


class MlxBackend:
    name = MLX.name
    capabilities = MLX.capabilities  # no grammars, logprobs or embeddings

    def unavailable_reason(self) -> str | None:
        error = mlx_import_error()
        if error is None:
            return None
        return f"mlx is not installed: {INSTALL_HINT} ({error})"

    def load(self, spec: ModelSpec) -> MlxBatchModel:
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(reason)
        from mlx_lm.utils import load_model, load_tokenizer

        path = Path(spec.path)
        config = read_model_config(path)
        try:
            model, config = load_model(path, lazy=False, strict=True, trust_remote_code=False)
            tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
        except (ValueError, KeyError, OSError) as exc:
            raise ModelRefused(f"mlx-lm cannot load {path.name}: {exc}") from exc
        return MlxBatchModel(spec, model, tokenizer, config)


def read_model_config(path: Path) -> dict[str, Any]:
    """config.json of a model directory that mlx-lm can build without running code from the model.

    Raises ModelRefused for a directory that is not a model, BackendUnavailable for an architecture
    mlx-lm has no implementation of.
    """
    if not path.is_dir():
        raise ModelRefused(
            f"The mlx backend runs model directories (MLX or Hugging Face safetensors); {path.name} "
            "is not one. GGUF files run on the llamacpp backend."
        )
    config = read_hf_config(path)
    if "model_file" in config:
        model_file = config["model_file"]
        raise ModelRefused(f"{path.name} asks to run its own code ({model_file!r}); Hearth never does.")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not _MODEL_TYPE.match(model_type):
        raise ModelRefused(f"{path.name}/config.json has no valid model_type.")
    if not _mlx_lm_knows(model_type):
        raise BackendUnavailable(f"mlx-lm has no implementation of model_type {model_type!r}.")
    if not any(path.glob("model*.safetensors")):
        raise ModelRefused(f"{path.name} has no model*.safetensors weights.")
    return config


def _mlx_lm_knows(model_type: str) -> bool:
    from mlx_lm.utils import MODEL_REMAPPING

    module = MODEL_REMAPPING.get(model_type, model_type)
    return importlib.util.find_spec(f"mlx_lm.models.{module}") is not None


class MlxBatchModel:
    """A loaded mlx-lm model with `n_slots` slots of KV cache: the `BatchModel` of `batch.py`."""

    def __init__(self, spec: ModelSpec, model: Any, tokenizer: Any, config: dict[str, Any]):
        from mlx.utils import tree_flatten

        from inference.engine.mlx_slots import SlotCache

        self.spec = spec
        self._model = model
        self._tokenizer = tokenizer  # mlx-lm TokenizerWrapper around a Hugging Face fast tokenizer
        self._config = config
        self._chat_template: str | None = None
        text_config = config.get("text_config") or {}
        self.vocab_size = int(config.get("vocab_size") or text_config.get("vocab_size") or len(tokenizer))
        self.eog_ids = frozenset(int(t) for t in tokenizer.eos_token_ids)
        self.n_slots = max(1, spec.n_slots)
        self.n_ctx = spec.n_ctx
        every_slot_full = self.n_ctx * self.n_slots
        self.kv_capacity = min(spec.kv_tokens, every_slot_full) if spec.kv_tokens > 0 else every_slot_full
        self._windows = attention_windows(model, str(config.get("model_type", "")))  # one per KV cache
        self._slots = [SlotCache(len(self._windows)) for _ in range(self.n_slots)]
        self.weights_bytes = sum(array.nbytes for _, array in tree_flatten(model.parameters()))
        self.kv_bytes_per_token = self._measure_kv_bytes_per_token()
        self.memory_bytes = self.weights_bytes + self.kv_bytes_per_token * self.kv_capacity  # the cache full

    # -- prompts and text -------------------------------------------------------------------------

    def render_prompt(self, request: GenerationRequest) -> str:
        if (request.prompt is None) == (request.messages is None):
            raise InvalidRequest("Give exactly one of messages or prompt.")
        if request.prompt is not None:
            return request.prompt
        return render_chat_with_tools(
            self._find_chat_template(),
            request.messages,
            bos_token=self._tokenizer.bos_token or "",
            eos_token=self._tokenizer.eos_token or "",
            add_generation_prompt=True,
            tools=request.tools,
        )

    def _find_chat_template(self) -> str:
        """The spec's override, else the model's own template, else its architecture's convention."""
        if self._chat_template is None:
            self._chat_template = ChatTemplate.for_model(
                self.spec.path,
                architecture=self.spec.architecture or str(self._config.get("model_type", "")),
                override=self.spec.chat_template,
                special_tokens=self._special_tokens(),
                bos_token=self._tokenizer.bos_token or "",
                eos_token=self._tokenizer.eos_token or "",
            ).template
        return self._chat_template

    def _special_tokens(self) -> set[str]:
        return set(self._tokenizer.all_special_tokens) | set(self._tokenizer.get_added_vocab())

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a rendered prompt, with the tokenizer's BOS unless the text already starts with it."""
        bos = self._tokenizer.bos_token
        add_special_tokens = not (bos and text.startswith(bos))
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True) if len(ids) else ""

    # -- decoding ---------------------------------------------------------------------------------

    def sampler(self, request: GenerationRequest, history: Sequence[int], n_prompt: int) -> Any:
        from inference.engine.mlx_sampling import MlxSampler

        if request.structure is not None or request.logprobs is not None:  # the selection never sends these here
            asked = "constrained decoding" if request.structure is not None else "log probabilities"
            raise InvalidRequest(f"The mlx backend cannot give {asked}; choose llamacpp.")
        return MlxSampler(request.sampling, history, vocab_size=self.vocab_size, n_ctx=self.n_ctx)

    def decode(self, work: list[SlotWork]) -> list[Sampled]:
        """The slots taking one token run together in one forward pass; a prompt chunk runs in a pass of its own
        (padding one-token rows to a chunk's length would multiply their work). One evaluation for all of it."""
        import mlx.core as mx

        self._check(work)
        tokens: dict[int, Any] = {}  # index in `work` -> its sampled token, lazily (1,)
        for group in self._groups(work):
            last_logits = self._forward([work[i] for i in group])  # (B, vocab)
            for row, index in enumerate(group):
                if work[index].sample:
                    tokens[index] = work[index].sampler.next_token(last_logits[row : row + 1])
        mx.eval(list(tokens.values()), [self._slots[item.slot].arrays() for item in work])
        for item in work:
            self._slots[item.slot].length = item.start + len(item.tokens)
        sampled = []
        for index, item in enumerate(work):
            if item.sample:
                token = int(tokens[index].item())
                item.sampler.accept(token)
                sampled.append(Sampled(item.slot, token))
        return sampled

    def _check(self, work: list[SlotWork]) -> None:
        """ValueError for work that makes no sense; KVCacheFull (before anything changes) for work that would take
        a slot past the context or all slots past the KV cache's capacity."""
        slots = [item.slot for item in work]
        if len(set(slots)) != len(slots):
            raise ValueError(f"A slot appears twice in one decode: {slots}.")
        for item in work:
            if not 0 <= item.slot < self.n_slots:
                raise ValueError(f"There is no slot {item.slot}; this model has {self.n_slots}.")
            if not item.tokens or not all(0 <= t < self.vocab_size for t in item.tokens):
                raise ValueError(f"Slot {item.slot} was given no tokens or a token outside the vocabulary.")
            if item.start > self._slots[item.slot].length:
                raise ValueError(f"Slot {item.slot} holds {self._slots[item.slot].length} positions; its work "
                                 f"cannot start at {item.start}.")
            if item.sample and item.sampler is None:
                raise ValueError(f"Slot {item.slot} asks for a sample without a sampler.")
        lengths = [slot.length for slot in self._slots]
        for item in work:
            lengths[item.slot] = item.start + len(item.tokens)
            if lengths[item.slot] > self.n_ctx:
                raise KVCacheFull(f"Slot {item.slot} would hold {lengths[item.slot]} positions, past the context "
                                  f"of {self.n_ctx}.")
        if sum(lengths) > self.kv_capacity:
            raise KVCacheFull(f"The slots would hold {sum(lengths)} positions; the KV cache has {self.kv_capacity}.")

    @staticmethod
    def _groups(work: list[SlotWork]) -> list[list[int]]:
        """Indices into `work` of each forward pass: every one-token item together, each longer one alone."""
        single = [i for i, item in enumerate(work) if len(item.tokens) == 1]
        return ([single] if single else []) + [[i] for i, item in enumerate(work) if len(item.tokens) > 1]

    def _forward(self, items: list[SlotWork]) -> Any:
        """Run the items' tokens into their slots; the logits after each item's last token, (B, vocab)."""
        import mlx.core as mx

        from inference.engine.mlx_slots import BatchLayout, SlotBatchCache

        counts = [len(item.tokens) for item in items]
        width = max(counts)
        inputs = mx.array([item.tokens + [0] * (width - len(item.tokens)) for item in items])  # (B, N), right-padded
        for item in items:
            self._slots[item.slot].write_from(item.start)
        layout = BatchLayout([item.start for item in items], counts)
        caches = [SlotBatchCache(layout, [self._slots[item.slot].layers[layer] for item in items], window)
                  for layer, window in enumerate(self._windows)]
        logits = self._model(inputs, cache=caches)  # (B, N, vocab)
        return logits[mx.arange(len(items)), mx.array(counts) - 1]  # (B, vocab)

    def _measure_kv_bytes_per_token(self) -> int:
        """What one position takes in a slot's cache, measured by running one token into two slots (so a model
        whose code cannot run beside others fails here, at load, not in a job)."""
        import mlx.core as mx

        probe = list(range(min(2, self.n_slots)))
        token = next(iter(self.eog_ids), 0)
        try:
            self._forward([SlotWork(slot, [token], 0, False) for slot in probe])
            mx.eval([self._slots[slot].arrays() for slot in probe])
        except Exception as exc:  # the model's own code, whatever it raises: this backend cannot run it
            model_type = self._config.get("model_type")
            raise BackendUnavailable(f"mlx-lm's {model_type} cannot run in the mlx backend's slots: {exc}") from exc
        layers = self._slots[0].layers
        per_token = sum((cache.keys.nbytes + cache.values.nbytes) // cache.keys.shape[2] for cache in layers)
        for slot in probe:
            self._slots[slot].trim(0)
        return per_token

    # -- slots ------------------------------------------------------------------------------------

    def kv_trim(self, slot: int, keep: int) -> None:
        self._slots[slot].trim(keep)

    def kv_copy(self, source: int, target: int, n_tokens: int) -> None:
        original = self._slots[source]
        live = [(cache.keys, cache.values) for cache in original.layers]
        self._slots[target].restore(live, min(n_tokens, original.length))  # into buffers of the target's own

    def kv_save(self, slot: int, n_tokens: int) -> SavedKV:
        n_tokens = min(n_tokens, self._slots[slot].length)
        arrays, nbytes = self._slots[slot].save(n_tokens)
        return SavedKV(arrays, nbytes, n_tokens)

    def kv_restore(self, slot: int, saved: SavedKV) -> None:
        self._slots[slot].restore(saved.data, saved.n_tokens)

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
        self._slots = []
        gc.collect()
        try:
            import mlx.core as mx

            mx.clear_cache()
        except ImportError:
            pass


def attention_windows(model: Any, model_type: str) -> list[int | None]:
    """One entry per KV cache the model asks for: None for full attention, the window of a sliding-window layer.
    BackendUnavailable for a model that keeps other state (recurrent layers, attention sinks): slots hold keys and
    values only."""
    from mlx_lm.models.cache import KVCache, RotatingKVCache

    if not hasattr(model, "make_cache"):
        return [None] * len(model.layers)
    windows, others = [], set()
    for cache in model.make_cache():
        if isinstance(cache, RotatingKVCache) and cache.keep == 0:
            windows.append(cache.max_size)
        elif type(cache) is KVCache:
            windows.append(None)
        else:
            others.add(type(cache).__name__)
    if others:
        raise BackendUnavailable(
            f"mlx-lm's {model_type} keeps {', '.join(sorted(others))} state, which the mlx backend's slots do not "
            "hold (they hold attention keys and values); run it on another backend."
        )
    return windows
