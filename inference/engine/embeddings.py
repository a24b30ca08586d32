"""Embeddings from any GGUF model: a separate llama.cpp context with embeddings on, one pooled vector per input.

The pooling is the model's own (`<arch>.pooling_type` in the GGUF: mean, CLS, last token) and mean pooling where
the model names none or "none" (decoder-only chat models). Vectors are L2-normalised, as OpenAI's are, so a dot
product is the cosine similarity. The context is separate from the generation one (a model can serve both),
and its ubatch holds a whole input: pooling sees every token of it at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inference.engine.backends import LLAMACPP
from inference.engine.base import BackendUnavailable, ContextLengthExceeded, EngineError, ModelSpec
from inference.engine.batch import SlotWork
from inference.engine.llamacpp import (
    TokenBatch,
    default_threads,
    free_context_and_weights,
    load_failure,
    load_weights,
    model_metadata,
    vocab_tokenize,
)

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
            raise BackendUnavailable(f"llama-cpp-python is not installed ({error}): {LLAMACPP.install_hint}") from error
        if spec.format != "gguf":
            raise BackendUnavailable(
                f"Embeddings are served by llama.cpp from GGUF models; this model is {spec.format}. Convert it to "
                "GGUF (python manage.py convert_model ID --to gguf) or choose a GGUF model.", status=400)
        self.spec = spec
        self._model, _params = load_weights(spec)
        self._context = None
        try:
            architecture = model_metadata(self._model, "general.architecture") or spec.architecture or ""
            pooling_key = f"{architecture}.pooling_type"
            self.pooling = pooling_for({pooling_key: model_metadata(self._model, pooling_key) or ""}, architecture)
            trained = llama_cpp.llama_model_n_ctx_train(self._model)
            self.n_ctx = min(spec.n_ctx, MAX_EMBEDDING_CTX, trained if trained > 0 else MAX_EMBEDDING_CTX)
            params = llama_cpp.llama_context_default_params()
            params.embeddings = True
            params.pooling_type = self.pooling
            params.n_ctx = params.n_batch = params.n_ubatch = self.n_ctx  # pooling sees a whole input at once
            params.n_threads = params.n_threads_batch = spec.n_threads or default_threads()
            params.no_perf = True
            self._context = llama_cpp.llama_init_from_model(self._model, params)
            if not self._context:
                raise load_failure(spec, " for embeddings")
            self._vocab = llama_cpp.llama_model_get_vocab(self._model)
            self._memory = llama_cpp.llama_get_memory(self._context)
            self._batch = TokenBatch(llama_cpp.llama_n_batch(self._context))
            self.dimensions = llama_cpp.llama_model_n_embd(self._model)
            self.memory_bytes = int(llama_cpp.llama_model_size(self._model)) + 4 * self.n_ctx * self.dimensions * 4
        except BaseException:
            self.close()
            raise

    @property
    def pooling_name(self) -> str:
        return POOLING_NAMES.get(self.pooling, str(self.pooling))

    def tokenize(self, text: str) -> list[int]:
        """BOS added where the vocabulary wants one; special-token text stays plain text."""
        return vocab_tokenize(self._vocab, text, add_bos=True, special=False)

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
        """The pooled embedding of one input: alone in the (emptied) cache, as sequence 0."""
        import llama_cpp

        llama_cpp.llama_memory_clear(self._memory, True)
        self._batch.fill([SlotWork(0, tokens, 0, True)])
        self._batch.outputs[: len(tokens)] = 1  # pooling reads every position
        status = llama_cpp.llama_decode(self._context, self._batch.struct)
        if status != 0:
            raise EngineError(f"llama.cpp could not embed the input (llama_decode status {status}).")
        pointer = llama_cpp.llama_get_embeddings_seq(self._context, 0)
        return [float(x) for x in pointer[: self.dimensions]]

    def close(self) -> None:
        """Free the context and the weights; safe to call twice."""
        free_context_and_weights(self)
