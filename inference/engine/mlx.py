"""The MLX backend: models in MLX format (or plain Hugging Face safetensors) run with mlx-lm.

MLX is the fast path on Apple silicon (Metal); the same code runs on Linux CPU with `mlx[cpu]`.
mlx and mlx-lm are optional, so they are imported lazily: this module imports fine without them and
`MlxBackend.unavailable_reason()` says how to install them.

Generation is a few named steps over mlx-lm's model modules: `_prefill` the prompt into a fresh KV
cache, then `_decode_one_token` per step; mlx-lm's `make_sampler` and `make_logits_processors` are set
from our `SamplingParams`, with presence and frequency penalties as a logits processor of our own.
Chat prompts are rendered by our sandboxed `chat_template`, never the tokenizer's own renderer.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from inference.engine.base import (
    BACKEND_CAPABILITIES,
    BackendUnavailable,
    ContextLengthExceeded,
    GenerationEvent,
    GenerationRequest,
    InvalidRequest,
    ModelRefused,
    ModelSpec,
)
from inference.engine.chat_template import conventional_template, find_chat_template, render_chat
from inference.engine.sampling import SamplingParams
from inference.engine.text import StopStrings

INSTALL_HINT = "pip install 'hearth[mlx]' (or: pip install \"mlx[cpu]\" mlx-lm on Linux)"
PREFILL_CHUNK_TOKENS = 512  # prompt tokens per forward pass while prefilling
_MODEL_TYPE = re.compile(r"^[a-z0-9_]+$")
_UTF8_HOLD_TOKENS = 4  # a character is at most 4 bytes: stop waiting for it after this many tokens


def mlx_import_error() -> str | None:
    """None when mlx and mlx-lm import, else the import error as text."""
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: mlx present but its native library (mlx-cpu) is not
        return f"{type(exc).__name__}: {exc}"
    return None


class MlxBackend:
    name = "mlx"
    capabilities = BACKEND_CAPABILITIES["mlx"]  # no grammars, logprobs or embeddings

    def unavailable_reason(self) -> str | None:
        error = mlx_import_error()
        if error is None:
            return None
        return f"mlx is not installed: {INSTALL_HINT} ({error})"

    def load(self, spec: ModelSpec) -> MlxLoadedModel:
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
        return MlxLoadedModel(spec, model, tokenizer, config)


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
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelRefused(f"{path.name}/config.json is missing or not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelRefused(f"{path.name}/config.json is not a JSON object.")
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


class MlxLoadedModel:
    def __init__(self, spec: ModelSpec, model: Any, tokenizer: Any, config: dict[str, Any]):
        import mlx.core as mx
        from mlx.utils import tree_flatten

        self.spec = spec
        self.n_ctx = spec.n_ctx
        self._model = model
        self._tokenizer = tokenizer  # mlx-lm TokenizerWrapper around a Hugging Face fast tokenizer
        self._config = config
        self._chat_template: str | None = None
        text_config = config.get("text_config") or {}
        self.vocab_size = int(config.get("vocab_size") or text_config.get("vocab_size") or len(tokenizer))
        self.eos_token_ids = frozenset(int(t) for t in tokenizer.eos_token_ids)
        weights = tree_flatten(model.parameters())
        self.memory_bytes = sum(a.nbytes for _, a in weights if isinstance(a, mx.array))  # weights only

    # -- prompts --------------------------------------------------------------------------------

    def render_prompt(self, request: GenerationRequest) -> str:
        if (request.prompt is None) == (request.messages is None):
            raise InvalidRequest("Give exactly one of messages or prompt.")
        if request.prompt is not None:
            return request.prompt
        return render_chat(
            self._find_chat_template(),
            request.messages,
            bos_token=self._tokenizer.bos_token or "",
            eos_token=self._tokenizer.eos_token or "",
            add_generation_prompt=True,
        )

    def _find_chat_template(self) -> str:
        if self._chat_template is None:
            template = self.spec.chat_template
            if template is None:
                template, _source = find_chat_template(self.spec.path)
            if template is None:
                architecture = self.spec.architecture or str(self._config.get("model_type", ""))
                template, _note = conventional_template(architecture, self._special_tokens())
            self._chat_template = template
        return self._chat_template

    def _special_tokens(self) -> set[str]:
        return set(self._tokenizer.all_special_tokens) | set(self._tokenizer.get_added_vocab())

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a rendered prompt, with the tokenizer's BOS unless the text already starts with it."""
        bos = self._tokenizer.bos_token
        add_special_tokens = not (bos and text.startswith(bos))
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    # -- generation -----------------------------------------------------------------------------

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[GenerationEvent]:
        import mlx.core as mx

        if request.max_tokens is not None and request.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be at least 1, not {request.max_tokens}.")
        prompt_ids = self.tokenize(self.render_prompt(request))
        if len(prompt_ids) >= self.n_ctx:
            raise ContextLengthExceeded(
                f"The prompt has {len(prompt_ids)} tokens, but this model's context is {self.n_ctx} tokens "
                "(room must be left for at least one new token)."
            )
        sampling = request.sampling
        sample = make_mlx_sampler(sampling)
        processors = make_mlx_logits_processors(sampling, self.vocab_size, self.n_ctx)
        budget = self.n_ctx - len(prompt_ids)
        limit = budget if request.max_tokens is None else min(request.max_tokens, budget)
        if sampling.seed is not None:
            mx.random.seed(sampling.seed)

        yield GenerationEvent("started", prompt_tokens=len(prompt_ids))
        started = time.perf_counter()
        first_token_at = last_token_at = None
        decoder = IncrementalDecoder(self._tokenizer, context=prompt_ids)
        stops = StopStrings(request.stop)
        completion_tokens = 0
        finish_reason = "length"
        hit_stop_string = False
        tokens = self._sampled_tokens(prompt_ids, sample, processors, should_stop)
        while completion_tokens < limit:
            token_id = None if should_stop() else next(tokens, None)
            if token_id is None:
                finish_reason = "cancelled"
                break
            last_token_at = time.perf_counter()
            first_token_at = first_token_at or last_token_at
            if token_id in self.eos_token_ids:
                finish_reason = "stop"
                break
            completion_tokens += 1
            text, hit_stop_string = stops.feed(decoder.add(token_id))
            yield GenerationEvent("token", text=text, token_id=token_id)
            if hit_stop_string:
                finish_reason = "stop"
                break
        tokens.close()
        if not hit_stop_string:
            tail, hit_stop_string = stops.feed(decoder.finish())
            if hit_stop_string:
                finish_reason = "stop"
            else:
                tail += stops.flush()
            if tail:
                yield GenerationEvent("token", text=tail)
        decode_seconds = (last_token_at - first_token_at) if first_token_at else 0.0
        yield GenerationEvent(
            "done",
            finish_reason=finish_reason,
            prompt_tokens=len(prompt_ids),
            completion_tokens=completion_tokens,
            time_to_first_token=(first_token_at - started) if first_token_at else None,
            tokens_per_second=(completion_tokens - 1) / decode_seconds if decode_seconds > 0 else None,
        )

    def _sampled_tokens(
        self,
        prompt_ids: list[int],
        sample: Callable,
        processors: list[Callable],
        should_stop: Callable[[], bool],
    ) -> Iterator[int]:
        """Sampled token ids without end: prefill once, then one decode step per token.

        Ends early only when `should_stop` turns true while a long prompt is being prefilled.
        """
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(self._model)
        history = list(prompt_ids)  # what the penalties look back over
        logits = self._prefill(prompt_ids, cache, should_stop)
        if logits is None:
            return
        while True:
            token_id = self._sample(logits, history, sample, processors)
            history.append(token_id)
            yield token_id
            logits = self._decode_one_token(token_id, cache)

    def _prefill(self, prompt_ids: list[int], cache: list[Any], should_stop: Callable[[], bool]) -> Any:
        """Run the prompt through the model in chunks; the logits of its last position, (1, vocab).

        None when `should_stop` turned true between chunks.
        """
        import mlx.core as mx

        for start in range(0, len(prompt_ids), PREFILL_CHUNK_TOKENS):
            if start and should_stop():
                return None
            chunk = mx.array(prompt_ids[start : start + PREFILL_CHUNK_TOKENS])[None]  # (1, T)
            logits = self._model(chunk, cache=cache)  # (1, T, vocab)
            mx.eval([c.state for c in cache])
        return logits[:, -1, :]  # (1, vocab)

    def _decode_one_token(self, token_id: int, cache: list[Any]) -> Any:
        import mlx.core as mx

        logits = self._model(mx.array([[token_id]]), cache=cache)  # (1, 1, vocab)
        return logits[:, -1, :]  # (1, vocab)

    @staticmethod
    def _sample(logits: Any, history: list[int], sample: Callable, processors: list[Callable]) -> int:
        import mlx.core as mx

        if processors:
            recent = mx.array(history[-PENALTY_WINDOW_MAX:])  # (≤ window,)
            for process in processors:
                logits = process(recent, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # (1, vocab)
        return int(sample(logprobs).item())

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
        gc.collect()
        try:
            import mlx.core as mx

            mx.clear_cache()
        except ImportError:
            pass


# -- sampling ------------------------------------------------------------------------------------

PENALTY_WINDOW_MAX = 4096  # the most tokens the penalties look back over, even for repeat_last_n -1


def make_mlx_sampler(params: SamplingParams) -> Callable:
    """mlx-lm's sampler chain (top_p, min_p, top_k, then temperature) set from our SamplingParams."""
    from mlx_lm.sample_utils import make_sampler

    if params.greedy:
        return make_sampler(temp=0.0)
    if not 0.0 < params.top_p <= 1.0:
        raise InvalidRequest(f"top_p must be in (0, 1], not {params.top_p}.", code="invalid_value")
    if not 0.0 <= params.min_p <= 1.0:
        raise InvalidRequest(f"min_p must be in [0, 1], not {params.min_p}.", code="invalid_value")
    if params.top_k < 0:
        raise InvalidRequest(f"top_k must be 0 (off) or more, not {params.top_k}.", code="invalid_value")
    return make_sampler(temp=params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=params.top_k)


def make_mlx_logits_processors(params: SamplingParams, vocab_size: int, n_ctx: int) -> list[Callable]:
    """logit_bias and the repeat penalty through mlx-lm; presence and frequency penalties our own.

    The penalties look at the last `repeat_last_n` tokens, prompt included, as llama.cpp does
    (0: penalties off, -1: the whole context).
    """
    from mlx_lm.sample_utils import make_logits_processors

    for token_id in params.logit_bias:
        if not 0 <= int(token_id) < vocab_size:
            raise InvalidRequest(
                f"logit_bias names token {token_id}, but the vocabulary has {vocab_size} tokens.",
                code="invalid_value",
            )
    if params.repeat_penalty <= 0:
        raise InvalidRequest(
            f"repeat_penalty must be above 0, not {params.repeat_penalty}.", code="invalid_value"
        )
    window = n_ctx if params.repeat_last_n < 0 else params.repeat_last_n
    window = min(window, PENALTY_WINDOW_MAX)
    penalties_on = window > 0
    bias = {int(k): float(v) for k, v in params.logit_bias.items()}
    repeat = params.repeat_penalty if penalties_on and params.repeat_penalty != 1.0 else None
    processors = make_logits_processors(
        logit_bias=bias or None, repetition_penalty=repeat, repetition_context_size=window
    )
    if penalties_on and (params.presence_penalty or params.frequency_penalty):
        processors.append(
            presence_frequency_penalty(params.presence_penalty, params.frequency_penalty, window)
        )
    return processors


def presence_frequency_penalty(presence: float, frequency: float, window: int) -> Callable:
    """OpenAI's penalties over the last `window` tokens: logit -= presence + frequency * count."""
    import mlx.core as mx
    import numpy as np

    def process(tokens: Any, logits: Any) -> Any:  # tokens (T,), logits (1, vocab)
        recent = np.asarray(tokens[-window:])
        if recent.size == 0:
            return logits
        ids, counts = np.unique(recent, return_counts=True)
        penalty = presence + frequency * counts.astype(np.float32)  # (unique,)
        return logits.at[:, mx.array(ids)].subtract(mx.array(penalty).astype(logits.dtype))

    return process


# -- text ----------------------------------------------------------------------------------------


class IncrementalDecoder:
    """Token ids in, new complete characters out.

    Decodes a short window of tokens twice, with and without the newest ones, and emits the
    difference: tokenizers that drop a leading space at the start of a decode (SentencePiece) get
    context from the tokens before, and a character split over several byte tokens waits until it is
    whole (the text would end in U+FFFD).
    """

    def __init__(self, tokenizer: Any, context: list[int] = (), context_tokens: int = 5):
        self._tokenizer = tokenizer
        self._ids = list(context[-context_tokens:])
        self._prefix_offset = 0  # start of the decode window
        self._read_offset = len(self._ids)  # tokens before this are emitted

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._emit(final=False)

    def finish(self) -> str:
        """Whatever is still held back, incomplete characters included (as U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, *, final: bool) -> str:
        emitted = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        waiting = len(self._ids) - self._read_offset
        if waiting == 0 or len(text) <= len(emitted):
            return ""
        if text.endswith("\ufffd") and not final and waiting < _UTF8_HOLD_TOKENS:
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return text[len(emitted) :]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True) if ids else ""
