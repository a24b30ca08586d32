"""The llama.cpp backend (llama-cpp-python). llama.cpp keeps its own sampler chain, set from SamplingParams."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from inference.engine.base import (
    BACKEND_CAPABILITIES,
    BackendUnavailable,
    ContextLengthExceeded,
    GenerationEvent,
    GenerationRequest,
    ModelSpec,
    fit_history,
    reply_reserve,
)
from inference.engine.chat_template import conventional_template, render_chat
from inference.engine.sampling import SamplingParams
from inference.engine.text import StopStrings, Utf8Stream

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenEvent(GenerationEvent):
    """A "token" event with the log probabilities of the tokens that make up its text (when asked for)."""

    logprobs: list[dict[str, Any]] | None = None


INSTALL_HINT = "pip install llama-cpp-python (for NVIDIA GPUs: CMAKE_ARGS=-DGGML_CUDA=on pip install llama-cpp-python)"
F32_KV_CACHE = 0  # GGML_TYPE_F32


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class LlamaCppBackend:
    name = "llamacpp"
    capabilities = BACKEND_CAPABILITIES["llamacpp"]  # grammars, logprobs and embeddings; penalty window fixed

    def unavailable_reason(self) -> str | None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as error:
            return f"llama-cpp-python is not installed ({error}): {INSTALL_HINT}"
        except Exception as error:  # a broken install (a syntax error, a missing shared library) is as unusable
            return f"llama-cpp-python is installed but fails to import ({type(error).__name__}: {error}): {INSTALL_HINT}"
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


class LlamaCppModel:
    def __init__(self, spec: ModelSpec):
        import llama_cpp

        self.spec = spec
        kv_type = {"type_k": F32_KV_CACHE, "type_v": F32_KV_CACHE} if spec.options.get("f32_kv_cache") else {}
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(spec.path),
                n_ctx=spec.n_ctx,
                n_batch=min(512, spec.n_ctx),
                n_gpu_layers=spec.n_gpu_layers,
                n_threads=spec.n_threads or default_threads(),
                logits_all=False,
                verbose=False,
                **kv_type,
            )
        except (ValueError, RuntimeError) as error:
            raise BackendUnavailable(
                f"llama.cpp could not load {os.path.basename(spec.path)} ({error}). The architecture may be newer "
                "than this llama.cpp build (upgrade llama-cpp-python), the file may be damaged, or it may not fit "
                "in memory (try a smaller quantization)."
            ) from error
        self.n_ctx = self.llm.n_ctx()
        self.n_gpu_layers = spec.n_gpu_layers
        self.memory_bytes = self._memory_estimate()
        model = self.llm._model
        self.bos_text = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
        self.eos_text = model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else ""
        template = spec.chat_template
        if not template:
            template, _note = conventional_template(spec.architecture)
        self.chat_template = template

    def _memory_estimate(self) -> int:
        import llama_cpp

        model = self.llm._model.model
        weights = int(llama_cpp.llama_model_size(model))
        layers, width = llama_cpp.llama_model_n_layer(model), llama_cpp.llama_model_n_embd(model)
        kv_cache = 2 * layers * width * self.n_ctx * 2  # K and V, f16
        return weights + kv_cache

    def render_prompt(self, request: GenerationRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        return render_chat(self.chat_template, request.messages or [], bos_token=self.bos_text,
                           eos_token=self.eos_text, add_generation_prompt=True)

    def tokenize_prompt(self, request: GenerationRequest) -> list[int]:
        text = self.render_prompt(request)
        # A template that writes BOS itself gets no second one; special tokens in the text are parsed.
        starts_with_bos = bool(self.bos_text) and text.startswith(self.bos_text)
        return self.llm.tokenize(text.encode("utf-8"), add_bos=not starts_with_bos, special=True)

    def _fit_history(self, request: GenerationRequest) -> tuple[GenerationRequest, int]:
        if not request.fit_history or not request.messages:
            return request, 0
        room = self.n_ctx - reply_reserve(self.n_ctx)

        def fits(messages):
            return len(self.tokenize_prompt(replace(request, messages=messages))) <= room

        messages, dropped = fit_history(request.messages, fits)
        return replace(request, messages=messages), dropped

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[GenerationEvent]:
        import llama_cpp

        started = time.perf_counter()
        request, dropped = self._fit_history(request)
        tokens = self.tokenize_prompt(request)
        if len(tokens) >= self.n_ctx:
            raise ContextLengthExceeded(
                f"This model's context is {self.n_ctx} tokens, but the prompt has {len(tokens)} tokens. "
                "Shorten the messages (or start a new conversation)."
            )
        yield GenerationEvent("started", prompt_tokens=len(tokens), dropped_messages=dropped)
        budget = self.n_ctx - len(tokens)
        if request.max_tokens is not None:
            budget = min(budget, request.max_tokens)
        vocab = self.llm._model.vocab
        params = request.sampling
        self.llm.set_seed(params.seed if params.seed is not None else random.randrange(2**31))
        utf8, stops = Utf8Stream(), StopStrings(request.stop)
        count, first_at, finish = 0, None, "length"
        arguments = llama_sampler_arguments(params)
        # `structure` constrains decoding (compiled to a grammar); `logprobs`: how many alternatives (0-20) to report.
        if request.structure:
            from inference.engine.grammar import compile_structure

            arguments["grammar"] = llama_cpp.LlamaGrammar.from_string(compile_structure(request.structure),
                                                                       verbose=False)
        top_logprobs = getattr(request, "logprobs", None)
        recorder = LogprobRecorder(self.llm, top_logprobs) if top_logprobs is not None else None
        if recorder is not None:  # first in the chain: it sees the model's own logits at the sampled position
            arguments["logits_processor"] = [recorder, *arguments.get("logits_processor", [])]
        pending: list[dict[str, Any]] = []
        # reset=True with n_tokens 0 evaluates the whole prompt: no prefix reuse, so whatever ran before, an
        # identical request gives identical output.
        self.llm.reset()
        stream = self.llm.generate(tokens, reset=True, **arguments)
        try:
            while count < budget:
                if should_stop():
                    finish = "cancelled"
                    break
                token = next(stream)
                count += 1
                if first_at is None:
                    first_at = time.perf_counter()
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                if recorder is not None:
                    pending.append(recorder.entry(token))
                text, stopped = stops.feed(utf8.feed(self.llm.detokenize([token])))
                if text and recorder is not None:
                    yield TokenEvent("token", text=text, token_id=token, logprobs=pending)
                    pending = []
                elif text:
                    yield GenerationEvent("token", text=text, token_id=token)
                if stopped:
                    finish = "stop"
                    break
        finally:
            stream.close()
        if finish != "stop":
            tail, _ = stops.feed(utf8.flush())
            tail += stops.flush()
            if tail:
                yield (TokenEvent("token", text=tail, logprobs=pending) if recorder
                       else GenerationEvent("token", text=tail))
        if should_stop() and finish == "length":
            finish = "cancelled"
        ended = time.perf_counter()
        decode_seconds = ended - first_at if first_at else 0.0
        yield GenerationEvent(
            "done",
            finish_reason=finish,
            prompt_tokens=len(tokens),
            completion_tokens=count,
            time_to_first_token=(first_at - started) if first_at else None,
            tokens_per_second=((count - 1) / decode_seconds) if count > 1 and decode_seconds > 0 else None,
        )

    def close(self) -> None:
        self.llm.close()


def llama_sampler_arguments(params: SamplingParams) -> dict:
    """SamplingParams onto llama-cpp-python's generate(): penalties, top-k, top-p, min-p, temperature, dist."""
    arguments = {
        "temp": max(params.temperature, 0.0),
        "top_k": params.top_k,
        "top_p": params.top_p,
        "min_p": params.min_p,
        "typical_p": 1.0,
        "repeat_penalty": params.repeat_penalty,
        "frequency_penalty": params.frequency_penalty,
        "presence_penalty": params.presence_penalty,
    }
    if params.logit_bias:
        arguments["logits_processor"] = [LogitBias(params.logit_bias)]
    return arguments


class LogitBias:
    """Adds the request's bias to the listed token ids' logits; -100 bans a token."""

    def __init__(self, bias: dict[int, float]):
        self.ids = list(bias)
        self.values = [-float("inf") if v <= -100 else float(v) for v in bias.values()]

    def __call__(self, _input_ids, logits):
        n_vocab = logits.shape[0]
        for token_id, value in zip(self.ids, self.values, strict=True):
            if 0 <= token_id < n_vocab:
                logits[token_id] += value
        return logits


class LogprobRecorder:
    """A logits processor that changes nothing: it keeps the log-softmax of the logits the model produced at the
    position being sampled (one vocabulary-sized row, never llama.cpp's logits_all), so that the sampled token's
    log probability and the `top` most likely alternatives can be reported."""

    def __init__(self, llm, top: int):
        self.llm = llm
        self.top = max(0, min(int(top), MAX_TOP_LOGPROBS))
        self._logprobs = None

    def __call__(self, _input_ids, logits):
        import numpy as np

        row = np.array(logits, dtype=np.float64)
        peak = row.max()
        self._logprobs = row - (peak + np.log(np.exp(row - peak).sum()))
        return logits

    def _piece(self, token: int) -> dict[str, Any]:
        raw = self.llm.detokenize([token])
        return {"token": raw.decode("utf-8", errors="replace"), "bytes": list(raw)}

    def entry(self, token: int) -> dict[str, Any]:
        """OpenAI's per-token shape: token, logprob, bytes, top_logprobs (most likely first)."""
        import numpy as np

        logprobs = self._logprobs
        if logprobs is None or not 0 <= token < len(logprobs):
            return {**self._piece(token), "logprob": 0.0, "top_logprobs": []}
        alternatives = []
        if self.top:
            best = np.argpartition(-logprobs, self.top - 1)[: self.top]
            best = best[np.argsort(-logprobs[best], kind="stable")]
            alternatives = [{**self._piece(int(t)), "logprob": float(logprobs[t])} for t in best]
        return {**self._piece(token), "logprob": float(logprobs[token]), "top_logprobs": alternatives}
