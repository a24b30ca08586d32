"""The OpenAI API as Hearth speaks it: request bodies, response objects, stream chunks and errors.

The shapes are those of the OpenAI spec (openai/openai-openapi `openapi.yaml`: the
`CreateChatCompletionRequest`, `CreateCompletionRequest`, `CreateChatCompletionResponse`,
`CreateChatCompletionStreamResponse`, `CreateCompletionResponse`, `Model` and `Error` schemas),
fields in the order of OpenAI's API reference; Hearth's own extensions sit in a fenced block at
the end of each request.

Requests are plain pydantic models (no Django), so the worker, the tests and django-ninja can all
use them. Unknown fields are ignored, never an error. Parameters Hearth cannot honour yet fail
validation by name (see `UNSUPPORTED_PARAMETERS`), rather than being silently dropped.

Responses are built as plain dicts by the small builder functions below (the SSE view sends
thousands of chunks, the dicts are what goes on the wire); the response models describe the same
shapes for the OpenAPI docs and for validating the builders in the tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from inference.engine.base import GenerationRequest
from inference.engine.sampling import SamplingParams

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 16  # n (times the prompts of a completion): one sequence each, one job per prompt

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class OpenAIModel(BaseModel):
    """Base of every request model: unknown fields are ignored, as OpenAI-compatible clients
    routinely send parameters (`store`, `metadata`, `service_tier`, ...) that only OpenAI knows."""

    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------------------------------------
# Parameters Hearth accepts but cannot honour yet
# ---------------------------------------------------------------------------------------------


def _unsupported(message: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", message)


# parameter -> (is this value one we cannot honour?, why). Each entry is lifted by deleting its
# line once the engine learns the feature; the defaults (n=1, logprobs off, no tools, text
# format, no echo, no suffix) always pass.
UNSUPPORTED_PARAMETERS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "best_of": (lambda b: b is not None and b > 1, "only best_of=1 is supported"),
    "echo": (lambda v: bool(v), "echo is not supported yet"),
    "suffix": (lambda v: bool(v), "suffix (text insertion) is not supported yet"),
}


class _GenerationParameters(OpenAIModel):
    """What chat and text completion requests share: the refusal of unsupported values and the
    translation to the engine's `SamplingParams`. Declares no fields, so each request keeps the
    spec's field order."""

    @field_validator(*UNSUPPORTED_PARAMETERS, mode="after", check_fields=False)
    @classmethod
    def refuse_unsupported_parameters(cls, value: Any, info: ValidationInfo) -> Any:
        cannot_honour, reason = UNSUPPORTED_PARAMETERS[info.field_name]
        if cannot_honour(value):
            raise _unsupported(reason)
        return value

    @field_validator("n", mode="after", check_fields=False)
    @classmethod
    def choices_within_the_limit(cls, n: int | None, info: ValidationInfo) -> int | None:
        prompts = len(info.data.get("prompt") or [None])
        if n is not None and n * prompts > MAX_CHOICES:
            raise PydanticCustomError(
                "invalid_value", "at most {limit} choices per request (n times the number of prompts), got {got}",
                {"limit": MAX_CHOICES, "got": n * prompts})
        return n

    @field_validator("logit_bias", mode="before", check_fields=False)
    @classmethod
    def logit_bias_keys_are_token_ids(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        for key in value:
            if not (str(key).isascii() and str(key).isdigit()):
                raise PydanticCustomError(
                    "invalid_value",
                    "keys must be token ids (non-negative integers), got '{key}'",
                    {"key": key},
                )
        return {str(key): bias for key, bias in value.items()}

    def to_sampling_params(self) -> SamplingParams:
        """OpenAI's defaults where the client sent nothing (or null): temperature 1, top_p 1."""
        top_k = self.top_k or 0
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(top_k, 0),  # -1, as vLLM spells "off", is 0 here
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repeat_penalty=1.0 if self.repeat_penalty is None else self.repeat_penalty,
            logit_bias={int(token_id): bias for token_id, bias in (self.logit_bias or {}).items()},
            seed=self.seed,
        )

    def effective_max_tokens(self) -> int | None:
        """`max_completion_tokens` wins over the older `max_tokens`; None: until the context is full."""
        max_completion_tokens = getattr(self, "max_completion_tokens", None)
        return max_completion_tokens if max_completion_tokens is not None else self.max_tokens

    def stop_list(self) -> tuple[str, ...]:
        """The stop sequences; empty strings dropped (they would stop before the first token)."""
        return tuple(s for s in self.stop or () if s)

    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk (`stream_options.include_usage`)."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


# ---------------------------------------------------------------------------------------------
# Request parts
# ---------------------------------------------------------------------------------------------


def _stop_as_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if value is not None and not isinstance(value, list):
        raise PydanticCustomError("invalid_type", "stop must be a string or a list of up to 4 strings")
    return value


# Normalised to a list so that errors name `stop` itself rather than a branch of a union.
Stop = Annotated[
    list[str],
    BeforeValidator(_stop_as_list),
    Field(max_length=MAX_STOP_SEQUENCES),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_SEQUENCES},
            ],
            "description": "Up to 4 sequences where generation stops; the text returned excludes them.",
        }
    ),
]

LogitBias = dict[str, Annotated[float, Field(ge=-100, le=100)]]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class StreamOptions(OpenAIModel):
    include_usage: bool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


_UNSUPPORTED_CONTENT_PARTS = {
    "image_url": "image inputs are not supported",
    "input_audio": "audio inputs are not supported",
    "file": "file inputs are not supported",
}


def _content_as_text(value: Any) -> Any:
    """A list of content parts becomes one string: the text (and refusal) parts joined by newlines.
    Image, audio and file parts are refused with a message that says so."""
    if not isinstance(value, list):
        return value
    texts = []
    for part in value:
        part_type = part.get("type") if isinstance(part, Mapping) else None
        if part_type in _UNSUPPORTED_CONTENT_PARTS:
            raise _unsupported(_UNSUPPORTED_CONTENT_PARTS[part_type])
        text = part.get(part_type) if part_type in ("text", "refusal") else None
        if not isinstance(text, str):
            raise PydanticCustomError(
                "invalid_value",
                "content parts must have type 'text' and a string 'text', got {part}",
                {"part": part},
            )
        texts.append(text)
    return "\n".join(texts)


MessageContent = Annotated[
    str | None,
    BeforeValidator(_content_as_text),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                        "required": ["type", "text"],
                    },
                },
                {"type": "null"},
            ],
            "description": "Text, or a list of text parts (joined by newlines). Images are not supported.",
        }
    ),
]


class ChatMessage(OpenAIModel):
    """One message of the conversation. After validation `content` is always a string (or None on
    an assistant message that only carries tool calls)."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: MessageContent = Field(default=None, validate_default=True)
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="after")
    @classmethod
    def content_is_required_except_from_the_assistant(
        cls, content: str | None, info: ValidationInfo
    ) -> str | None:
        role = info.data.get("role")
        if content is None and role is not None and role != "assistant":
            raise PydanticCustomError("missing", "content is required on a {role} message", {"role": role})
        return content

    def to_engine_message(self) -> dict[str, Any]:
        """The dict the chat template sees. "developer" is OpenAI's newer name for "system",
        which is the role model chat templates know; an assistant turn without content and
        without tool calls is "" (templates would print None as "None")."""
        content = "" if self.content is None and not self.tool_calls else self.content
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": content,
        }
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(self, key) is not None:
                message[key] = getattr(self, key)
        return message


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


class ChatCompletionRequest(_GenerationParameters):
    """POST /v1/chat/completions."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    frequency_penalty: Penalty | None = 0.0
    logit_bias: LogitBias | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=1, ge=1, le=128)
    presence_penalty: Penalty | None = 0.0
    response_format: ResponseFormat | None = None
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: Stop | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=1.0, ge=0, le=2)
    top_p: float | None = Field(default=1.0, gt=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    user: str | None = None
    parallel_tool_calls: bool | None = None

    # --- Hearth extensions: not in the OpenAI spec (llama.cpp / vLLM names) ---------------------
    top_k: int | None = Field(default=None, ge=-1, description="0 or -1: off")
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0, description="1.0: off")
    backend: str | None = Field(default=None, max_length=64, description="force a backend by name")
    # --- end of Hearth extensions -----------------------------------------------------------

    def uses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    def engine_messages(self) -> list[dict[str, Any]]:
        """The messages for the chat template. With tools, the tools are described in the system message (in
        the Hermes format most templates teach), earlier calls are written as `<tool_call>` blocks and tool
        results as `<tool_response>` user turns, which every template can render."""
        messages = [message.to_engine_message() for message in self.messages]
        if not self.uses_tools():
            return messages
        converted = []
        for message in messages:
            if message["role"] == "assistant" and message.get("tool_calls"):
                blocks = [
                    "<tool_call>\n" + json.dumps({"name": (call.get("function") or {}).get("name"),
                                                   "arguments": _arguments(call.get("function") or {})})
                    + "\n</tool_call>"
                    for call in message["tool_calls"]
                ]
                text = "\n".join(filter(None, [message.get("content") or "", *blocks]))
                converted.append({"role": "assistant", "content": text})
            elif message["role"] == "tool":
                converted.append({"role": "user",
                                  "content": f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"})
            else:
                converted.append(message)
        described = tools_system_prompt(self.tools or [])
        if converted and converted[0]["role"] == "system":
            converted[0] = {**converted[0], "content": f"{converted[0]['content']}\n\n{described}"}
        else:
            converted.insert(0, {"role": "system", "content": described})
        return converted

    def structure(self) -> dict[str, Any] | None:
        """What constrained decoding must produce: a required or named tool call, else the response format's
        (described as data; the worker's backend compiles it)."""
        from inference.engine.grammar import structure_for_response_format, structure_for_tools

        if self.tools and (self.tool_choice == "required" or isinstance(self.tool_choice, dict)):
            return structure_for_tools(self.tools, self.tool_choice, parallel=self.parallel_tool_calls is True)
        if self.response_format is not None:
            return structure_for_response_format(self.response_format.model_dump())
        return None

    def logprob_alternatives(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def to_generation_request(self) -> GenerationRequest:
        extras = {"structure": self.structure(), "logprobs": self.logprob_alternatives()}
        return GenerationRequest(
            messages=self.engine_messages(),
            sampling=self.to_sampling_params(),
            max_tokens=self.effective_max_tokens(),
            stop=self.stop_list(),
            n=self.n or 1,
            **extras,
        )


def _arguments(function: dict[str, Any]) -> Any:
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def tools_system_prompt(tools: list[dict[str, Any]]) -> str:
    """The tools, described as Hermes-style templates do (Qwen, Hermes, many fine-tunes)."""
    functions = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "You may call one or more functions to assist with the user query. The functions are listed in "
        f"<tools></tools>:\n<tools>\n{functions}\n</tools>\n\nFor each function call, return a JSON object with "
        "the function name and arguments within <tool_call></tool_call> tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def _prompt_as_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise PydanticCustomError("invalid_type", "prompt must be a string")
    if not all(isinstance(p, str) for p in value):
        raise _unsupported("token-id prompts are not supported; send the prompt as a string")
    return value


class CompletionRequest(_GenerationParameters):
    """POST /v1/completions (OpenAI's legacy text completion)."""

    model: str
    prompt: Annotated[
        list[str],
        BeforeValidator(_prompt_as_list),
        Field(min_length=1),
        WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
    ]
    best_of: int | None = Field(default=None, ge=0, le=20)
    echo: bool | None = False
    frequency_penalty: Penalty | None = 0.0
    logit_bias: LogitBias | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    max_tokens: int | None = Field(default=16, ge=1)
    n: int | None = Field(default=1, ge=1, le=128)
    presence_penalty: Penalty | None = 0.0
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: Stop | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = Field(default=1.0, ge=0, le=2)
    top_p: float | None = Field(default=1.0, gt=0, le=1)
    user: str | None = None

    # --- Hearth extensions: not in the OpenAI spec (llama.cpp / vLLM names) ---------------------
    top_k: int | None = Field(default=None, ge=-1, description="0 or -1: off")
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0, description="1.0: off")
    backend: str | None = Field(default=None, max_length=64, description="force a backend by name")
    # --- end of Hearth extensions -----------------------------------------------------------

    @property
    def prompt_text(self) -> str:
        return self.prompt[0]

    def to_generation_request(self) -> GenerationRequest:
        extras = {"logprobs": self.logprobs}
        return GenerationRequest(
            prompt=self.prompt_text,
            sampling=self.to_sampling_params(),
            max_tokens=self.effective_max_tokens(),
            stop=self.stop_list(),
            n=self.n or 1,
            **extras,
        )


MAX_EMBEDDING_INPUTS = 2048


def _input_as_list(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise PydanticCustomError("invalid_type", "input must be a string or a list of strings")
    if value and all(isinstance(item, int) for item in value) or any(isinstance(item, list) for item in value):
        raise _unsupported("token-id inputs are not supported; send the text as strings")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise PydanticCustomError("invalid_type", "input[{index}] must be a string", {"index": index})
        if not item:
            raise PydanticCustomError("invalid_value", "input[{index}] is empty; send non-empty text",
                                      {"index": index})
    return value


class EmbeddingRequest(OpenAIModel):
    """POST /v1/embeddings."""

    input: Annotated[
        list[str],
        BeforeValidator(_input_as_list),
        Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS),
        WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1},
                                  {"type": "array", "items": {"type": "string", "minLength": 1},
                                   "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS}]}),
    ]
    model: str
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = Field(default=None, ge=1, description="must equal the model's own dimensions")
    user: str | None = None


# ---------------------------------------------------------------------------------------------
# Responses: the shapes (for the OpenAPI docs and the tests)
# ---------------------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(0, description="Prompt tokens the worker's prefix cache held (not computed again).")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatCompletionDelta(BaseModel):
    """Only the keys that were set belong on the wire: dump with `exclude_unset=True`."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: ChatCompletionDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """`choices` is empty and `usage` set on the final usage chunk; `usage` is null on the others
    when the client asked for usage, absent when it did not."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class CompletionChunk(Completion):
    """OpenAI streams text completions with the same shape and `object` as the full response;
    `finish_reason` is null until the last text chunk."""


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# ---------------------------------------------------------------------------------------------
# Responses: the builders the views call
# ---------------------------------------------------------------------------------------------


def openai_finish_reason(engine_reason: str | None) -> str | None:
    """The engine's "cancelled" has no OpenAI equivalent; a client that still listens sees "stop"."""
    return "stop" if engine_reason == "cancelled" else engine_reason


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage; `prompt_tokens_details.cached_tokens` counts the prompt tokens a worker's prefix cache held."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def chat_completion(
    id: str,
    created: int,
    model: str,
    *,
    content: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    system_fingerprint: str | None = None,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
        "system_fingerprint": system_fingerprint,
    }


def chat_chunk(
    id: str,
    created: int,
    model: str,
    *,
    role: Literal["assistant"] | None = None,
    content: str | None = None,
    finish_reason: str | None = None,
    system_fingerprint: str | None = None,
    include_usage: bool = False,
    index: int = 0,
) -> dict[str, Any]:
    """One streamed chat chunk (of choice `index`). The first carries `role="assistant", content=""`, the middle ones
    `content`, the last `finish_reason` and an empty delta. With `include_usage` every chunk has
    `"usage": null`, as the spec asks when the client set `stream_options.include_usage`."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    chunk: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(
    id: str,
    created: int,
    model: str,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    system_fingerprint: str | None = None,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """The last chat chunk when the client asked for usage: no choices, the totals."""
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
    }


def completion(
    id: str,
    created: int,
    model: str,
    *,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    system_fingerprint: str | None = None,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
    }


def completion_chunk(
    id: str,
    created: int,
    model: str,
    *,
    text: str = "",
    finish_reason: str | None = None,
    system_fingerprint: str | None = None,
    include_usage: bool = False,
    index: int = 0,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def completion_usage_chunk(
    id: str,
    created: int,
    model: str,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    system_fingerprint: str | None = None,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """The last text completion chunk when the client asked for usage: no choices, the totals."""
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
    }


def chat_logprobs(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A chat choice's `logprobs`: per token its text, log probability, bytes and the top alternatives."""
    return {"content": [dict(entry) for entry in entries], "refusal": None}


def completion_logprobs(entries: Sequence[dict[str, Any]], text_offset: int = 0) -> dict[str, Any]:
    """A text completion choice's legacy `logprobs`: parallel lists, alternatives as {token: logprob}."""
    offsets, position = [], text_offset
    for entry in entries:
        offsets.append(position)
        position += len(entry["token"])
    return {
        "tokens": [entry["token"] for entry in entries],
        "token_logprobs": [entry["logprob"] for entry in entries],
        "top_logprobs": [{alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]} for entry in entries],
        "text_offset": offsets,
    }


def embedding_list(model: str, vectors: Sequence[Sequence[float]], *, prompt_tokens: int,
                   encoding_format: str | None = "float") -> dict[str, Any]:
    """The embeddings in input order; base64 is the little-endian float32 bytes, as OpenAI sends them."""
    import base64
    import struct

    def encode(vector: Sequence[float]) -> list[float] | str:
        if encoding_format == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        return list(vector)

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def error_body(
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error envelope: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _error_code(pydantic_type: str) -> str:
    """OpenAI's codes for request errors, from pydantic's error types."""
    if pydantic_type == "missing":
        return "missing_required_parameter"
    if pydantic_type == "unsupported_parameter":
        return "unsupported_parameter"
    if pydantic_type.endswith(("_type", "_parsing")):  # string_type, float_parsing, model_type, ...
        return "invalid_type"
    return "invalid_value"


def validation_error_to_openai(
    error: ValidationError | Sequence[Mapping[str, Any]], *, skip_loc: int = 0
) -> dict[str, Any]:
    """The first validation error as OpenAI's error envelope, naming the parameter.

    `error` is a pydantic ValidationError or its `.errors()` list (django-ninja's ValidationError
    carries such a list in `.errors`, with locations prefixed by ("body", "<argument name>"):
    pass `skip_loc=2` for those).
    """
    errors = error.errors() if isinstance(error, ValidationError) else list(error)
    if not errors:
        return error_body("Invalid request.")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())[skip_loc:]]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    message = (
        str(first.get("msg", "invalid value")).removeprefix("Value error, ").replace(" after validation", "")
    )
    if kind == "missing" and param:
        text = f"Missing required parameter: '{param}'."
    elif param:
        text = f"Invalid '{param}': {message[:1].lower()}{message[1:]}."
        given = first.get("input")
        if (
            isinstance(given, int | float | str)
            and len(repr(given)) <= 80
            and kind != "unsupported_parameter"
        ):
            text += f" Got {given!r}."
    else:
        text = f"Invalid request body: {message[:1].lower()}{message[1:]}."
    return error_body(text, param=param, code=_error_code(kind))
