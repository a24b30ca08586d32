"""The torch backend: Hugging Face safetensors directories and GGUF files on our own PyTorch engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import torch

from inference.engine.base import (
    BACKEND_CAPABILITIES,
    ContextLengthExceeded,
    GenerationEvent,
    GenerationRequest,
    InvalidRequest,
    ModelRefused,
    ModelSpec,
)
from inference.engine.chat_template import ChatTemplate
from inference.engine.text import StopStrings, StreamingDetokenizer
from inference.engine.torch.generate import generate_tokens
from inference.engine.torch.loader import LoadedWeights, load_hf_model, read_config
from inference.engine.torch.models import matvec
from inference.engine.torch.models.layers import KVCache
from inference.engine.torch.tokenizer import TextTokenizer


class TorchBackend:
    name = "torch"
    capabilities = BACKEND_CAPABILITIES["torch"]  # sampling only: no grammars, logprobs or embeddings

    def unavailable_reason(self) -> str | None:
        return None  # torch is a core dependency; CPU always works

    def load(self, spec: ModelSpec) -> TorchLoadedModel:
        """`spec.options`: "dtype" (float32, bfloat16, float16) and "device" (cpu, cuda)."""
        if spec.n_threads:
            torch.set_num_threads(spec.n_threads)
        device, dtype = spec.options.get("device"), spec.options.get("dtype")
        if spec.format == "hf-safetensors":
            weights = load_hf_model(spec.path, device=device, dtype=dtype)
            tokenizer = TextTokenizer.from_hf_dir(spec.path)
            architecture = spec.architecture or read_config(spec.path)["model_type"]
            gguf_template = None
        elif spec.format == "gguf":
            from inference.engine.torch.gguf_loader import load_gguf_model

            weights, tokenizer, header = load_gguf_model(spec.path, device=device, dtype=dtype)
            architecture = spec.architecture or header.get("general.architecture", "")
            gguf_template = header.get("tokenizer.chat_template")
        else:
            raise ModelRefused(f"The torch engine runs hf-safetensors and gguf models, not {spec.format!r}.")
        added_tokens = {t.content for t in tokenizer.tokenizer.get_added_tokens_decoder().values()}
        chat_template = ChatTemplate.for_model(
            spec.path, architecture=architecture, gguf_template=gguf_template, override=spec.chat_template,
            special_tokens=added_tokens, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "",
        )
        n_ctx = min(spec.n_ctx, _model_context(weights))
        matvec.warm_up(weights.args.hidden_size, weights.dtype, weights.device)  # compile now, not mid-request
        return TorchLoadedModel(weights, tokenizer, chat_template, n_ctx=n_ctx)


def _model_context(weights: LoadedWeights) -> int:
    return int(getattr(weights.args, "max_position_embeddings", 0) or 1 << 30)


class TorchLoadedModel:
    """One loaded model with its KV cache (one sequence); generations take turns."""

    def __init__(self, weights: LoadedWeights, tokenizer: TextTokenizer, chat_template: ChatTemplate, *,
                 n_ctx: int):
        self.weights = weights
        self.model = weights.model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.n_ctx = n_ctx
        args = weights.args
        self.cache = KVCache(args.n_layers, 1, args.n_kv_heads, n_ctx, args.head_dim,
                             dtype=weights.dtype, device=weights.device)
        self.memory_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters()) + self.cache.nbytes()
        self._lock = threading.Lock()

    def render_prompt(self, request: GenerationRequest) -> str:
        if (request.prompt is None) == (request.messages is None):
            raise InvalidRequest("Give exactly one of messages or prompt.")
        if request.prompt is not None:
            return request.prompt
        return self.chat_template.render(request.messages, add_generation_prompt=True)

    def tokenize(self, text: str) -> list[int]:
        """Special tokens in the text become their ids; BOS is added only when the text lacks it."""
        return self.tokenizer.encode(text)

    def generate(self, request: GenerationRequest, should_stop: Callable[[], bool] = lambda: False
                 ) -> Iterator[GenerationEvent]:
        if request.max_tokens is not None and request.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be at least 1, not {request.max_tokens}.")
        started = time.perf_counter()
        prompt_ids = self.tokenize(self.render_prompt(request))
        if len(prompt_ids) >= self.n_ctx:
            raise ContextLengthExceeded(
                f"The prompt has {len(prompt_ids)} tokens, but this model's context is {self.n_ctx} tokens "
                "(room must be left for at least one new token)."
            )
        room = self.n_ctx - len(prompt_ids)
        limit = room if request.max_tokens is None else min(request.max_tokens, room)
        yield GenerationEvent("started", prompt_tokens=len(prompt_ids))
        with self._lock:
            yield from self._stream(prompt_ids, request, limit, should_stop, started)

    def _stream(self, prompt_ids: list[int], request: GenerationRequest, limit: int,
                should_stop: Callable[[], bool], started: float) -> Iterator[GenerationEvent]:
        detokenizer = StreamingDetokenizer(self.tokenizer.decode)
        stops = StopStrings(request.stop)
        finish_reason, completion_tokens, hit_stop_string = "length", 0, False
        first_token_at = last_token_at = None
        tokens = generate_tokens(self.model, self.cache, prompt_ids, params=request.sampling,
                                 max_new_tokens=limit, stop_ids=self.tokenizer.stop_ids)
        try:
            for token_id in tokens:
                last_token_at = time.perf_counter()
                first_token_at = first_token_at or last_token_at
                if token_id in self.tokenizer.stop_ids:
                    finish_reason = "stop"
                    break
                completion_tokens += 1
                text, hit_stop_string = stops.feed(detokenizer.add(token_id))
                yield GenerationEvent("token", text=text, token_id=token_id)
                if hit_stop_string:
                    finish_reason = "stop"
                    break
                if should_stop():
                    finish_reason = "cancelled"
                    break
        finally:
            tokens.close()
        if not hit_stop_string:  # release what was held back: a half character, a possible stop start
            tail, hit_stop_string = stops.feed(detokenizer.flush())
            if hit_stop_string:
                finish_reason = "stop"
            else:
                tail += stops.flush()
            if tail:
                yield GenerationEvent("token", text=tail)
        decode_seconds = (last_token_at - first_token_at) if first_token_at else 0.0
        yield GenerationEvent(
            "done", finish_reason=finish_reason, prompt_tokens=len(prompt_ids),
            completion_tokens=completion_tokens,
            time_to_first_token=(first_token_at - started) if first_token_at else None,
            tokens_per_second=(completion_tokens - 1) / decode_seconds if decode_seconds > 0 else None,
        )

    def close(self) -> None:
        self.model = None
        self.weights = None
        self.cache = None

