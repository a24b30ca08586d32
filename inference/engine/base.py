"""The contracts between the server and the backends: requests in, typed events out.

Nothing here imports Django; the worker, the benchmarks and the tests use the engine alone.
A backend turns a `ModelSpec` into a `LoadedModel`: a `BatchModel` (engine/batch.py) whose slots the
worker's scheduler decodes together, and the one output processor (engine/output.py) turns its token ids into
the events the relay carries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from inference.engine.sampling import SamplingParams

FinishReason = Literal["stop", "length", "cancelled"]


class EngineError(Exception):
    """An error a user can act on. `code` is the OpenAI-style error code, `status` the HTTP status."""

    code = "engine_error"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class ContextLengthExceeded(EngineError):
    code = "context_length_exceeded"
    status = 400


class InvalidRequest(EngineError):
    code = "invalid_request_error"
    status = 400


class BackendUnavailable(EngineError):
    """The backend cannot run here (not installed, no device) or cannot load this model."""

    code = "backend_unavailable"
    status = 503


class ModelRefused(EngineError):
    """A file that failed validation: never handed to a backend."""

    code = "model_refused"
    status = 400


@dataclass(frozen=True)
class ModelSpec:
    """Everything a backend needs to load one model. `path` is a file (GGUF) or a directory."""

    path: str
    format: str  # "gguf" | "hf-safetensors" | "mlx"
    architecture: str = ""
    n_ctx: int = 8192  # already min(model's, HEARTH_MAX_CTX)
    n_gpu_layers: int = -1  # -1: offload every layer the device can take
    n_threads: int | None = None
    chat_template: str | None = None  # overrides the template found in the model files
    n_slots: int = 1  # sequences decoded together (a backend that cannot batch uses 1)
    kv_tokens: int = 0  # KV cache cells of all slots (llama.cpp: cut into one context each); 0: n_ctx per slot
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationRequest:
    """A chat (`messages`) or a raw completion (`prompt`); exactly one of them is set."""

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    # A chat's tools (OpenAI's `tools` list): given to a chat template that reads `tools`, else described in the
    # system message (engine/chat_template.py `render_chat`).
    tools: list[dict[str, Any]] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None  # None: until the context is full
    stop: tuple[str, ...] = ()
    # Chat pages set this: the oldest turns (never the system prompt, never the last message) are left out
    # until the prompt fits with room for a reply. The API leaves it off and refuses an over-long prompt.
    fit_history: bool = False
    # Constrained decoding, described as data (the backend compiles it; llama.cpp into a GBNF grammar):
    #   {"type": "json_schema", "schema": {...}}: one JSON value valid for the schema ({"type": "object"}: any object);
    #   {"type": "tool_calls", "schema": <one call's JSON schema>, "open": "<tool_call>\n", "close": "\n</tool_call>",
    #    "parallel": bool}: one call (several with "parallel"), each wrapped in the model's own tags.
    structure: dict[str, Any] | None = None
    # Log probabilities: None, off; N, the sampled token's log probability and the N most likely alternatives.
    logprobs: int | None = None
    # Choices: n sequences sampled from the one prompt, read once (engine/scheduler.py shares its prefill).
    n: int = 1


def choice_request(request: GenerationRequest, index: int) -> GenerationRequest:
    """The request of choice `index` (of `request.n`): with a seed, it samples with seed + index, so the choices
    differ and the whole answer is reproducible; without one, each choice's sampler draws its own seed."""
    seed = request.sampling.seed
    if seed is None or index == 0:
        return request
    return replace(request, sampling=replace(request.sampling, seed=(seed + index) % 2**63))


def reply_reserve(n_ctx: int) -> int:
    """Room a chat keeps for the reply when older turns are left out: a quarter of the context."""
    return n_ctx // 4


def fit_history(
    messages: list[dict[str, Any]], fits: Callable[[list[dict[str, Any]]], bool]
) -> tuple[list[dict[str, Any]], int]:
    """Leave out the oldest turns until `fits` says yes; system messages and the last message always stay.

    Returns the messages to use and how many were left out.
    """
    kept = list(messages)
    dropped = 0
    while not fits(kept):
        droppable = [i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"]
        if not droppable:
            break
        del kept[droppable[0]]
        dropped += 1
    return kept, dropped


SAMPLING_PARAMETERS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                       "repeat_penalty", "repeat_last_n", "logit_bias", "seed")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can honour (each backend's are in engine/backends.py); selection skips a backend that lacks
    what a request needs.

    `formats` are the files it loads itself; `structured_output` is constrained decoding (GBNF grammars, so
    JSON schemas and forced tool calls); tool calling needs nothing of a backend (the chat template renders the
    tools and the server parses the calls); `devices` are those the backend can drive where its build supports them.
    """

    formats: tuple[str, ...]
    sampling: tuple[str, ...] = SAMPLING_PARAMETERS
    structured_output: bool = False
    embeddings: bool = False
    logprobs: bool = False
    devices: tuple[str, ...] = ("cpu",)
    batching: bool = False  # decodes its slots in one forward pass (else one slot after another)

    def lacks(self, needs: frozenset[str]) -> list[str]:
        """The needs this backend cannot honour, in a stable order ("logprobs", "sampling:top_k", ...)."""
        missing = []
        for need in sorted(needs):
            kind, _, detail = need.partition(":")
            if kind == "sampling":
                if detail not in self.sampling:
                    missing.append(need)
            elif not getattr(self, kind, False):
                missing.append(need)
        return missing


class LoadedModel(Protocol):
    """What `Backend.load` returns: a `BatchModel` (engine/batch.py: slots of KV cache, `decode`, the prefix-cache
    operations, tokenizer and samplers), and `embed` where the backend's capabilities say `embeddings`."""

    n_ctx: int
    memory_bytes: int

    def render_prompt(self, request: GenerationRequest) -> str:
        """The exact text the model sees: the chat template applied, or the raw prompt."""

    def embed(self, inputs: Sequence[str], should_stop: Callable[[], bool] = lambda: False) -> Any:
        """One normalised vector per input (engine/embeddings.py's EmbeddingResult); only backends whose
        capabilities include `embeddings` are given embedding jobs."""

    def close(self) -> None: ...


class Backend(Protocol):
    """One backend (its name and capabilities are its `BackendInfo`'s, engine/backends.py). One whose capabilities
    say `embeddings` also has `load_embedding_model(spec)`: a LoadedModel for embedding jobs."""

    name: str
    capabilities: Capabilities

    def unavailable_reason(self) -> str | None:
        """None when the backend can run on this machine, else what is missing and how to fix it."""

    def load(self, spec: ModelSpec) -> LoadedModel: ...
