"""The OpenAI API's answers as Hearth sends them: response objects, stream chunks and errors.

The shapes are those of the OpenAI spec (openai/openai-openapi `openapi.yaml`: the
`CreateChatCompletionResponse`, `CreateChatCompletionStreamResponse`, `CreateCompletionResponse`,
`CreateEmbeddingResponse`, `Model` and `Error` schemas), fields in the order of OpenAI's API reference. The
requests are in api/schemas/openai.py.

Responses are built as plain dicts by the small builder functions below (the SSE view sends
thousands of chunks, the dicts are what goes on the wire); the response models describe the same
shapes for the OpenAPI docs and for validating the builders in the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


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


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as a JSON object's text, as the model wrote them.")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatCompletionMessage(BaseModel):
    """`tool_calls` is only there when the model called tools."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


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


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A call's first delta has its index, id, type, name and arguments ""; the later ones the index and a piece
    of the arguments (the pieces joined are the whole arguments)."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ChatCompletionDelta(BaseModel):
    """Only the keys that were set belong on the wire: dump with `exclude_unset=True`."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


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


def tool_call(id: str, name: str, arguments: str) -> dict[str, Any]:
    """One whole call of a function, as a chat message's `tool_calls` lists it."""
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def chat_message(content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The assistant's message of a whole chat choice; `tool_calls` only when it called tools."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def tool_call_start(index: int, id: str, name: str) -> dict[str, Any]:
    """A streamed call's first delta: its index among the choice's calls, id, type, name and empty arguments."""
    return {"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}


def tool_call_arguments(index: int, arguments: str) -> dict[str, Any]:
    """A later delta of streamed call `index`: the next piece of its arguments."""
    return {"index": index, "function": {"arguments": arguments}}


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
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": chat_message(content, tool_calls),
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
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One streamed chat chunk (of choice `index`). The first carries `role="assistant", content=""`, the middle ones
    `content` or `tool_calls` deltas (`tool_call_start`, `tool_call_arguments`), the last `finish_reason` and an
    empty delta. With `include_usage` every chunk has `"usage": null`, as the spec asks when the client set
    `stream_options.include_usage`."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
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
    object: str = "chat.completion.chunk",
) -> dict[str, Any]:
    """The last chunk when the client asked for usage: no choices, the totals (a text completion's has the object
    "text_completion")."""
    return {
        "id": id,
        "object": object,
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
