"""Embeddings from any GGUF model: a separate llama.cpp context with embeddings on, one pooled vector per input.

The pooling is the model's own (`<arch>.pooling_type` in the GGUF: mean, CLS, last token) and mean pooling where
the model names none or "none" (decoder-only chat models). Vectors are L2-normalised, as OpenAI's are, so a dot
product is the cosine similarity. The context is separate from the generation one (a model can serve both),
and its ubatch holds a whole input: pooling sees every token of it at once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inference.engine.base import BackendUnavailable, ContextLengthExceeded, EngineError, ModelSpec
from inference.engine.llamacpp import INSTALL_HINT, default_threads

CACHE_NAME = "llamacpp-embedding"  # its key in the model cache, apart from the generation context
MAX_EMBEDDING_CTX = 2048  # longest input; the ubatch (and its compute buffers) is this big


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


class EmbeddingsCancelled(EngineError):
    code = "cancelled"
    status = 499


POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


def pooling_for(metadata: dict[str, str], architecture: str) -> int:
    """The model's pooling type, or mean when it names none (or "none", which would give a vector per token)."""
    import llama_cpp

    raw = metadata.get(f"{architecture}.pooling_type") if architecture else None
    try:
        declared = int(raw) if raw is not None else None
    except ValueError:
        declared = None
    if declared in (llama_cpp.LLAMA_POOLING_TYPE_CLS, llama_cpp.LLAMA_POOLING_TYPE_LAST,
                    llama_cpp.LLAMA_POOLING_TYPE_MEAN):
        return declared
    return llama_cpp.LLAMA_POOLING_TYPE_MEAN


def l2_normalize(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


class LlamaCppEmbeddingModel:
    def __init__(self, spec: ModelSpec):
        try:
            import llama_cpp
        except ImportError as error:
            raise BackendUnavailable(f"llama-cpp-python is not installed ({error}): {INSTALL_HINT}") from error
        if spec.format != "gguf":
            raise BackendUnavailable(
                f"Embeddings are served by llama.cpp from GGUF models; this model is {spec.format}. Convert it to "
                "GGUF (python manage.py convert_model ID --to gguf) or choose a GGUF model.", status=400)
        self.spec = spec
        self.n_ctx = min(spec.n_ctx, MAX_EMBEDDING_CTX)
        common = {"model_path": str(spec.path), "n_gpu_layers": spec.n_gpu_layers,
                  "n_threads": spec.n_threads or default_threads(), "verbose": False}
        try:
            probe = llama_cpp.Llama(vocab_only=True, **common)
            metadata = dict(probe.metadata)
            probe.close()
            architecture = metadata.get("general.architecture", spec.architecture or "")
            self.pooling = pooling_for(metadata, architecture)
            self.llm = llama_cpp.Llama(embedding=True, n_ctx=self.n_ctx, n_batch=self.n_ctx, n_ubatch=self.n_ctx,
                                       pooling_type=self.pooling, **common)
        except (ValueError, RuntimeError) as error:
            raise BackendUnavailable(
                f"llama.cpp could not load {os.path.basename(spec.path)} for embeddings ({error})."
            ) from error
        self.dimensions = self.llm.n_embd()
        model = self.llm._model.model
        self.memory_bytes = int(llama_cpp.llama_model_size(model)) + 4 * self.n_ctx * self.dimensions * 4

    @property
    def pooling_name(self) -> str:
        return POOLING_NAMES.get(self.pooling, str(self.pooling))

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def embed(self, inputs: Sequence[str], should_stop: Callable[[], bool] = lambda: False) -> EmbeddingResult:
        """One normalised vector per input, in order. Every input is checked against the context first."""
        tokenized = [self.tokenize(text) for text in inputs]
        for index, tokens in enumerate(tokenized):
            if len(tokens) > self.n_ctx:
                where = f"input[{index}]" if len(inputs) > 1 else "The input"
                raise ContextLengthExceeded(
                    f"{where} has {len(tokens)} tokens; this model embeds at most {self.n_ctx} tokens per input. "
                    "Split the text into shorter pieces.")
            if not tokens:
                raise EngineError(f"input[{index}] is empty; send non-empty text.", code="invalid_value", status=400)
        vectors = []
        for tokens in tokenized:
            if should_stop():
                raise EmbeddingsCancelled("The request was cancelled.")
            vectors.append(l2_normalize(self._embed_tokens(tokens)))
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(len(t) for t in tokenized))

    def _embed_tokens(self, tokens: list[int]) -> list[float]:
        import llama_cpp

        llm = self.llm
        llm._batch.reset()
        llm._ctx.kv_cache_clear()
        llm._batch.add_sequence(tokens, 0, True)
        llm._ctx.decode(llm._batch)
        pointer = llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, 0)
        vector = [float(x) for x in pointer[: self.dimensions]]
        llm._batch.reset()
        return vector

    def close(self) -> None:
        self.llm.close()
