"""Ollama's API as Hearth speaks it: request bodies, their translation into the OpenAI schema, the response objects
and the error shape.

The shapes are those of Ollama's `docs/api.md` (ollama/ollama) and its official Python client's `_types.py`
(ollama/ollama-python). A chat or generate request becomes an OpenAI `ChatCompletionRequest` (a generate request
with `raw: true` a `CompletionRequest`), built with `model_validate` so that all of its validation applies; its
errors are reported under Ollama's names (`options.num_predict`, not `max_tokens`). `options` map onto sampling as
below; what Hearth cannot honour is refused by name with a 400, what only tunes Ollama's own runner (`num_ctx`,
`num_gpu`, `num_thread`, ...) is ignored: the server's administrator sets those for every user.

Requests are plain pydantic models (no Django) and the response builders plain functions over the library's
model rows, so the unit tests use them directly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from api.schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from api.tools import parse_tool_calls

# The level of Ollama's API that Hearth answers as (/api/version): tools (0.3), /api/embed (0.3), structured
# outputs (0.5), streamed tool calls (0.8). Clients that gate features on the version see them.
OLLAMA_API_VERSION = "0.9.0"
REPEAT_LAST_N = 64  # the window of Hearth's repetition penalties (SamplingParams.repeat_last_n), Ollama's default


class OllamaModel(BaseModel):
    """Base of every request model: unknown fields are ignored, as Ollama does."""

    model_config = ConfigDict(extra="ignore")


def _refused(message: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", message)


# ---------------------------------------------------------------------------------------------------------
# keep_alive
# ---------------------------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's keep_alive as seconds: a number of seconds, or a Go duration string ("5m", "1h30m", "0"); any
    negative value is "forever" (-1). None: not given. ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a duration such as \"5m\" or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)  # "300", "-1", "0": seconds, as several clients send them
        except ValueError:
            sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
            parts = _DURATION.findall(body)
            if not body or "".join(number + unit for number, unit in parts) != body:
                raise ValueError(f"keep_alive {value!r} is not a duration such as \"5m\", \"1h30m\" or \"0\"") from None
            seconds = sign * sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    else:
        raise ValueError("keep_alive must be a duration such as \"5m\" or a number of seconds")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError("keep_alive must be a finite duration")
    return -1.0 if seconds < 0 else seconds


class _KeepAlive(OllamaModel):
    keep_alive: float | None = Field(default=None, description="A duration (\"5m\", \"0\") or seconds; 0 unloads.")

    @field_validator("keep_alive", mode="before")
    @classmethod
    def keep_alive_is_a_duration(cls, value: Any) -> float | None:
        try:
            return keep_alive_seconds(value)
        except ValueError as error:
            raise PydanticCustomError("invalid_value", str(error)) from None

    @property
    def unloads(self) -> bool:
        """keep_alive 0: unload the model (at once for an empty request, after the answer otherwise)."""
        return self.keep_alive == 0


# ---------------------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------------------

# Sampling options that keep Ollama's names in the OpenAI schema (Hearth's extensions top_k, min_p, repeat_penalty).
SAME_NAMES = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repeat_penalty")
# The OpenAI field an Ollama name became -> the Ollama name, for error messages.
OLLAMA_NAMES = {**{name: f"options.{name}" for name in SAME_NAMES}, "seed": "options.seed",
                "max_tokens": "options.num_predict", "stop": "options.stop", "response_format": "format",
                "logprobs": "top_logprobs"}


class Options(OllamaModel):
    """Ollama's `options` (its Modelfile parameters). Sampling maps onto Hearth's; load-time options (num_ctx,
    num_batch, num_gpu, main_gpu, num_thread, low_vram, f16_kv, use_mmap, use_mlock, numa, vocab_only,
    logits_all, embedding_only) and num_keep / penalize_newline are ignored: the server's configuration sets the
    context, the threads and the GPU layers of a model for everyone, and Hearth never shifts the context."""

    seed: int | None = Field(default=None, description="negative: a random seed")
    num_predict: int | None = Field(default=None, description="the most tokens to generate; -1 or -2: no limit")
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    temperature: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | None = None
    # Refused unless at their "off" value: Hearth's samplers (llama.cpp's chain, set from SamplingParams) have them
    # not, or with a fixed window.
    typical_p: float | None = None
    tfs_z: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    repeat_last_n: int | None = None
    # Accepted and ignored (see above).
    num_ctx: int | None = None
    num_keep: int | None = None
    penalize_newline: bool | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("num_predict", mode="after")
    @classmethod
    def num_predict_is_a_budget(cls, value: int | None) -> int | None:
        if value is not None and value < 1 and value not in (-1, -2):
            raise PydanticCustomError(
                "invalid_value", "num_predict must be a number of tokens (1 or more), or -1 for no limit")
        return value

    @field_validator("typical_p", "tfs_z", mode="after")
    @classmethod
    def filters_hearth_lacks(cls, value: float | None, info) -> float | None:
        if value is not None and value != 1.0:
            raise _refused(f"Hearth's samplers have no {info.field_name} filter; leave it out (or 1.0)")
        return value

    @field_validator("mirostat", mode="after")
    @classmethod
    def no_mirostat(cls, value: int | None) -> int | None:
        if value:
            raise _refused("Hearth's samplers have no Mirostat; leave it out (or 0) and use temperature, top_k, "
                           "top_p or min_p")
        return value

    @field_validator("repeat_last_n", mode="after")
    @classmethod
    def fixed_penalty_window(cls, value: int | None) -> int | None:
        if value is not None and value != REPEAT_LAST_N:
            raise _refused(f"Hearth's repetition penalties look at the last {REPEAT_LAST_N} tokens; leave "
                           f"repeat_last_n out (or {REPEAT_LAST_N})")
        return value

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI request fields these options set (only those the client set)."""
        fields: dict[str, Any] = {name: getattr(self, name) for name in SAME_NAMES if getattr(self, name) is not None}
        if self.seed is not None and self.seed >= 0:
            fields["seed"] = self.seed
        if self.num_predict is not None:
            fields["max_tokens"] = self.num_predict if self.num_predict > 0 else None
        if self.stop:
            fields["stop"] = list(self.stop)
        return fields


# ---------------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------------

Format = Literal["", "json"] | dict[str, Any]


def response_format(format: Format | None) -> dict[str, Any] | None:
    """`format`: "json" (any JSON object) or a JSON schema, as OpenAI's response_format."""
    if not format:
        return None
    if format == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "ollama_format", "schema": format}}


class ToolCallFunction(OllamaModel):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arguments", mode="before")
    @classmethod
    def arguments_as_object(cls, value: Any) -> Any:
        if isinstance(value, str):  # some clients send the OpenAI way, a JSON string
            try:
                return json.loads(value)
            except ValueError:
                raise PydanticCustomError("invalid_value", "arguments must be a JSON object") from None
        return {} if value is None else value


class ToolCall(OllamaModel):
    function: ToolCallFunction


class Message(OllamaModel):
    """A chat message. `thinking` (a thinking model's reasoning, sent back by some clients) is dropped."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    images: list[Any] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None

    @field_validator("images", mode="after")
    @classmethod
    def no_images(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise _refused("images are not supported: Hearth serves text models")
        return value

    def to_openai(self, index: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{index}_{position}", "type": "function",
                 "function": {"name": call.function.name,
                              "arguments": json.dumps(call.function.arguments, ensure_ascii=False)}}
                for position, call in enumerate(self.tool_calls)]
        if self.tool_name:
            message["name"] = self.tool_name
        return message


def _no_thinking(value: Any) -> Any:
    if value not in (None, False, "", "false"):
        raise _refused("thinking is not supported: Hearth does not separate a model's reasoning from its answer; "
                       "leave think out (or false)")
    return value


class _Generation(_KeepAlive):
    """What chat and generate requests share."""

    model: str = Field(min_length=1, max_length=256)
    format: Format | None = None
    options: Options | None = None
    stream: bool | None = Field(default=True, description="NDJSON (the default) or one JSON object")
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("think", mode="after")
    @classmethod
    def no_thinking(cls, value: Any) -> Any:
        return _no_thinking(value)

    @property
    def streams(self) -> bool:
        return self.stream is not False

    def common_openai_fields(self, model: str) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": model, "stream": self.streams, **(self.options.to_openai()
                                                                           if self.options else {})}
        if self.logprobs or self.top_logprobs:
            fields["logprobs"] = True
            fields["top_logprobs"] = self.top_logprobs or 0
        return fields


class ChatRequest(_Generation):
    """POST /api/chat. No messages (or an empty list): load the model, or unload it with keep_alive 0."""

    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None

    @property
    def is_empty(self) -> bool:
        return not self.messages

    def openai_fields(self, model: str) -> dict[str, Any]:
        fields = self.common_openai_fields(model)
        fields["messages"] = [message.to_openai(index) for index, message in enumerate(self.messages or [])]
        if self.tools:
            fields["tools"] = self.tools
        if response_format(self.format):
            fields["response_format"] = response_format(self.format)
        return fields

    def to_openai(self, model: str) -> ChatCompletionRequest:
        """The OpenAI request (`model`: the library's name of the model). Raises RequestRefused."""
        return validated(ChatCompletionRequest, self.openai_fields(model))


class GenerateRequest(_Generation):
    """POST /api/generate. The prompt is the user turn of the model's chat template (with `system` as the system
    turn); `raw: true` sends it as it is (a text completion, for base models). No prompt: load the model, or
    unload it with keep_alive 0."""

    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[Any] | None = None

    @field_validator("suffix", mode="after")
    @classmethod
    def no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise _refused("suffix (fill-in-the-middle) is not supported")
        return value

    @field_validator("template", mode="after")
    @classmethod
    def no_template(cls, value: str | None) -> str | None:
        if value:
            raise _refused("template is not supported: Hearth renders the model's own chat template (see "
                           "/api/show); send raw: true with a prompt you formatted yourself")
        return value

    @field_validator("context", mode="after")
    @classmethod
    def no_context(cls, value: list[int] | None) -> list[int] | None:
        if value:
            raise _refused("context (deprecated in Ollama) is not supported: send the conversation to /api/chat")
        return value

    @field_validator("images", mode="after")
    @classmethod
    def no_images(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise _refused("images are not supported: Hearth serves text models")
        return value

    @property
    def is_empty(self) -> bool:
        return not self.prompt

    def openai_fields(self, model: str) -> dict[str, Any]:
        fields = self.common_openai_fields(model)
        if self.raw:
            fields["prompt"] = self.prompt or ""
            fields.setdefault("max_tokens", None)  # the completions' default is 16 tokens; Ollama's, no limit
            if fields.pop("logprobs", None):
                fields["logprobs"] = fields.pop("top_logprobs", 0)
            return fields
        messages = [{"role": "system", "content": self.system}] if self.system else []
        fields["messages"] = [*messages, {"role": "user", "content": self.prompt or ""}]
        if response_format(self.format):
            fields["response_format"] = response_format(self.format)
        return fields

    def to_openai(self, model: str) -> ChatCompletionRequest | CompletionRequest:
        if self.raw and self.system:
            raise RequestRefused("system is not applied with raw: true (the prompt is sent as it is); put it in "
                                 "the prompt, or leave raw out", "system")
        if self.raw and self.format:
            raise RequestRefused("format needs the model's chat template: leave raw out to use it", "format")
        if self.raw and self.top_logprobs and self.top_logprobs > 5:
            raise RequestRefused("with raw: true, top_logprobs may be at most 5", "top_logprobs")
        return validated(CompletionRequest if self.raw else ChatCompletionRequest, self.openai_fields(model))


class ShowRequest(OllamaModel):
    """POST /api/show. `name` is the older spelling of `model`."""

    model: str | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, max_length=256)
    verbose: bool | None = None

    @property
    def model_name(self) -> str:
        return self.model or self.name or ""


def _inputs(value: Any) -> Any:
    return [] if value in (None, "") else value


class EmbedRequest(_KeepAlive):
    """POST /api/embed. An empty input loads the model (keep_alive 0: unloads it) and answers no embeddings."""

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | None = None
    truncate: bool | None = Field(default=None, description="accepted; an input over the context is a 400")
    options: dict[str, Any] | None = Field(default=None, description="ignored (no option changes an embedding)")
    dimensions: int | None = Field(default=None, ge=1, description="must equal the model's own dimensions")

    @property
    def inputs(self) -> list[str]:
        value = _inputs(self.input)
        return [value] if isinstance(value, str) else list(value)

    def to_openai(self, model: str) -> EmbeddingRequest:
        fields: dict[str, Any] = {"model": model, "input": self.inputs}
        if self.dimensions is not None:
            fields["dimensions"] = self.dimensions
        return validated(EmbeddingRequest, fields)


class EmbeddingsRequest(_KeepAlive):
    """POST /api/embeddings (superseded by /api/embed): one prompt, one vector."""

    model: str = Field(min_length=1, max_length=256)
    prompt: str | None = None
    options: dict[str, Any] | None = None

    @property
    def inputs(self) -> list[str]:
        return [self.prompt] if self.prompt else []

    def to_openai(self, model: str) -> EmbeddingRequest:
        return validated(EmbeddingRequest, {"model": model, "input": self.inputs})


class RequestRefused(Exception):
    """A request Hearth cannot serve as asked: 400 with `message`, naming `param` (Ollama's name)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def ollama_param(loc: Sequence[Any]) -> str:
    """An OpenAI request's error location under the Ollama name of the field."""
    parts = [str(part) for part in loc]
    if not parts:
        return ""
    head = OLLAMA_NAMES.get(parts[0], parts[0])
    if parts[0] == "input":
        head = "input"
    return ".".join([head, *parts[1:]])


def validated(request_class: type[BaseModel], fields: dict[str, Any]):
    """`request_class.model_validate(fields)`; its first error as RequestRefused under Ollama's names."""
    try:
        return request_class.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        param = ollama_param(first.get("loc", ()))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        given = first.get("input")
        text = f"Invalid '{param}': {message}" if param else f"Invalid request: {message}"
        if isinstance(given, int | float | str) and len(repr(given)) <= 80 and first.get("type") != "missing":
            text += f" (got {given!r})"
        code = "unsupported_parameter" if first.get("type") == "unsupported_parameter" else "invalid_value"
        raise RequestRefused(text + ".", param or None, code) from None


# ---------------------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------------------


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes `created_at` and `modified_at`."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def done_reason(engine_reason: str | None) -> str:
    """Ollama knows stop, length, load and unload; a job cancelled from elsewhere reads as stop."""
    return engine_reason if engine_reason in ("stop", "length", "load", "unload") else "stop"


def logprobs(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Hearth's per-token log probabilities in Ollama's shape (token, logprob, top_logprobs)."""
    return [{"token": entry.get("token", ""), "logprob": entry.get("logprob", 0.0),
             "top_logprobs": [{"token": alt.get("token", ""), "logprob": alt.get("logprob", 0.0)}
                              for alt in entry.get("top_logprobs") or ()]}
            for entry in entries]


def tool_calls(openai_calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments as a JSON string) in Ollama's shape (arguments as an object)."""
    calls = []
    for index, call in enumerate(openai_calls):
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = {}
        calls.append({"function": {"index": index, "name": function.get("name", ""), "arguments": arguments}})
    return calls


def assistant_message(text: str, tools: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The assistant's message: with tools, the calls in the text (the formats of api/tools.py) as `tool_calls`
    and the rest as `content`."""
    if not tools:
        return {"role": "assistant", "content": text}
    content, calls = parse_tool_calls(text, tools)
    message: dict[str, Any] = {"role": "assistant", "content": content or ""}
    if calls:
        message["tool_calls"] = tool_calls(calls)
    return message


def chat_chunk(model: str, message: dict[str, Any], *, done: bool = False, **fields: Any) -> dict[str, Any]:
    return {"model": model, "created_at": timestamp(), "message": message, "done": done, **fields}


def generate_chunk(model: str, text: str, *, done: bool = False, **fields: Any) -> dict[str, Any]:
    return {"model": model, "created_at": timestamp(), "response": text, "done": done, **fields}


def statistics(*, finish_reason: str | None, prompt_tokens: int, completion_tokens: int, total_seconds: float,
               time_to_first_token: float | None = None, tokens_per_second: float | None = None) -> dict[str, Any]:
    """The last object's fields: done_reason and the counts and durations (nanoseconds). Hearth measures the time
    to the first token (prompt_eval_duration) and the decoding rate (eval_duration); loading is not measured apart
    (load_duration 0: the time is in prompt_eval_duration when the request loaded the model)."""
    nanoseconds = 1_000_000_000
    decoding = (completion_tokens - 1) / tokens_per_second if tokens_per_second and completion_tokens > 1 else 0.0
    return {
        "done_reason": done_reason(finish_reason),
        "total_duration": int(total_seconds * nanoseconds),
        "load_duration": 0,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": int((time_to_first_token or 0.0) * nanoseconds),
        "eval_count": completion_tokens,
        "eval_duration": int(decoding * nanoseconds),
    }


def residency_response(shape: str, model: str, action: str) -> dict[str, Any]:
    """The answer to an empty request: the model loaded ("load") or unloaded ("unload")."""
    if shape == "chat":
        return chat_chunk(model, {"role": "assistant", "content": ""}, done=True, done_reason=action)
    return generate_chunk(model, "", done=True, done_reason=action)


# --- the library ------------------------------------------------------------------------------------------

FORMATS = {"gguf": "gguf", "hf-safetensors": "safetensors", "mlx": "mlx"}


def parameter_size(count: int) -> str:
    """Ollama's spelling of a parameter count: "8.0B", "494.0M"; "" when unknown."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.1f}{suffix}"
    return str(count) if count else ""


def digest(model) -> str:
    """A stable sha256 of the library entry (its name, file, size and import time). Not the file's hash: hashing
    gigabytes on every listing is out of the question, and Hearth has no Ollama manifests."""
    created = model.created_at.isoformat() if model.created_at else ""
    return hashlib.sha256(f"{model.name}\0{model.path}\0{model.size_bytes}\0{created}".encode()).hexdigest()


def details(model) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": FORMATS.get(model.format, model.format),
        "family": model.architecture,
        "families": [model.architecture] if model.architecture else None,
        "parameter_size": parameter_size(model.parameter_count),
        "quantization_level": (model.quantization or "").upper(),
    }


def model_entry(model) -> dict[str, Any]:
    """A model of /api/tags: the same library as /v1/models, under the same names."""
    return {"name": model.name, "model": model.name,
            "modified_at": timestamp(model.created_at) if model.created_at else None,
            "size": model.size_bytes, "digest": digest(model), "details": details(model)}


def running_entry(model, context_length: int) -> dict[str, Any]:
    """A model of /api/ps: loaded in some worker. Hearth keeps a model until its memory budget needs the room (no
    timer): `expires_at` is null; the memory it takes on a GPU is not reported (`size_vram` null)."""
    return {**model_entry(model), "expires_at": None, "size_vram": None, "context_length": context_length}


def model_info(model, context_length: int) -> dict[str, Any]:
    """Ollama's `model_info` keys, from what the library knows of the model."""
    architecture = model.architecture or "unknown"
    info: dict[str, Any] = {"general.architecture": architecture,
                            "general.parameter_count": model.parameter_count}
    if model.quantization:
        info["general.quantization"] = model.quantization
    if model.context_length:
        info[f"{architecture}.context_length"] = model.context_length
    info["hearth.context_length"] = context_length
    return info


def show_response(model, *, context_length: int, capabilities: list[str], file_name: str) -> dict[str, Any]:
    """/api/show: the details, the chat template (Jinja, as the model ships it: not Ollama's Go template), the
    parameters Hearth runs it with, and a Modelfile that describes (Hearth has none)."""
    parameters = f"num_ctx {context_length}"
    modelfile = (f"# Hearth serves {model.name!r} from its model library; Hearth has no Modelfiles, this one "
                 f"describes it.\nFROM {file_name}\nPARAMETER {parameters}\n")
    return {
        "modelfile": modelfile,
        "parameters": parameters,
        "template": model.chat_template or "",
        "details": details(model),
        "model_info": model_info(model, context_length),
        "capabilities": capabilities,
        "modified_at": timestamp(model.created_at) if model.created_at else None,
    }


# --- errors -------------------------------------------------------------------------------------------------


def error_body(status: int, openai_error: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama's error shape, {"error": "<message>"}, from OpenAI's envelope (api/dialects.py)."""
    return {"error": str(openai_error.get("message") or "Request failed.")}


def stream_error(event: Mapping[str, Any]) -> dict[str, Any]:
    """An error in the middle of a stream: one NDJSON line {"error": ...} (the Python client raises it)."""
    return {"error": str(event.get("message") or "Generation failed.")}


# --- pull ---------------------------------------------------------------------------------------------------


class PullRequest(OllamaModel):
    """POST /api/pull: a Hugging Face model name ("hf.co/owner/name:Q4_K_M" as Ollama writes it, or "owner/name").
    `name` is the older spelling of `model`; `insecure` is accepted and means nothing here (the hub is HTTPS)."""

    model: str | None = Field(default=None, max_length=400)
    name: str | None = Field(default=None, max_length=400)
    insecure: bool | None = None
    stream: bool | None = Field(default=True, description="NDJSON progress (the default) or one JSON object")

    @property
    def model_name(self) -> str:
        return (self.model or self.name or "").strip()

    @property
    def streams(self) -> bool:
        return self.stream is not False


class PullProgress:
    """Ollama's pull progress, from successive states of a Hearth pull (a dict with status, phase, files,
    bytes_done, current_file, error_text): {"status": "pulling manifest"}, then per file {"status": "downloading
    <file>", "digest", "total", "completed"} when its count moves, {"status": "verifying sha256 digest"},
    {"status": "writing manifest"} and {"status": "success"}; a failure is one {"error": ...} line. Each line is
    said once."""

    def __init__(self) -> None:
        self._manifest = self._verified = False
        self._completed: dict[str, int] = {}

    def lines(self, state: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self._manifest:
            out.append({"status": "pulling manifest"})
            self._manifest = True
        succeeded = state.get("status") == "succeeded"
        offset = 0
        for file in state.get("files") or []:
            name, size = str(file.get("name", "")), int(file.get("size") or 0)
            completed = size if succeeded else max(0, min(size, int(state.get("bytes_done") or 0) - offset))
            offset += size
            started = completed > 0 or name == state.get("current_file")
            if started and self._completed.get(name) != completed:
                self._completed[name] = completed
                digest = file.get("sha256") or file.get("blob_id") or ""
                out.append({"status": f"downloading {name}", "digest": f"sha256:{digest}" if file.get("sha256")
                            else digest, "total": size, "completed": completed})
        if (succeeded or state.get("phase") == "importing") and not self._verified:
            out.append({"status": "verifying sha256 digest"})
            self._verified = True
        if succeeded:
            out += [{"status": "writing manifest"}, {"status": "success"}]
        elif state.get("status") in ("failed", "cancelled"):
            out.append({"error": str(state.get("error_text") or f"The pull was {state.get('status')}.")})
        return out
