"""Anthropic's Messages API as Hearth speaks it: request bodies, their translation into OpenAI chat requests, the
response objects, stream events and errors.

The shapes are those of Anthropic's API reference ("Messages", "Count Message tokens", "Streaming Messages",
"Errors"), and of the official `anthropic` client's types (`anthropic.types.Message`, `RawMessageStreamEvent`,
`MessageTokensCount`, `shared.ErrorResponse`), which the tests validate the responses with.

A request is translated into the OpenAI schema's `ChatCompletionRequest` (built with `model_validate`, so all of
its checks apply) and from there into the engine's request, as every dialect is (api/generation.py):

- `system` (a string or text blocks) -> a system message;
- consecutive messages of the same role are merged into one turn, as Anthropic does;
- an assistant's `tool_use` blocks -> its `tool_calls` (`input` as the JSON `arguments`), its text blocks -> its
  content; `thinking` / `redacted_thinking` blocks of earlier turns are dropped (Hearth's models do not read them);
- a user's `tool_result` blocks -> `tool` messages (`tool_call_id` = `tool_use_id`; `is_error` prefixes "Error: "),
  its text blocks -> a user message, in their order;
- `tools` -> functions (`input_schema` as `parameters`); `tool_choice` auto / any / tool / none -> "auto" /
  "required" / the named function / "none"; `disable_parallel_tool_use` true -> `parallel_tool_calls` false, false
  -> true, absent -> Hearth's default (a forced call is one call);
- `stop_sequences` -> `stop`, `temperature`, `top_p`, `top_k` as they are; `metadata` and `thinking` are accepted
  and ignored (no thinking blocks come back).

Refused with a 400 that says why: image, document and other non-text blocks (Hearth serves text models), Anthropic's
own server tools (web search, code execution, ...), and a conversation that ends with an assistant turn (a
"prefill" the model would continue: the chat template always opens a new turn).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from api.schemas.openai import ChatCompletionRequest
from config.paths import hide_paths

MAX_STOP_SEQUENCES = 4  # the engine's stop strings, as for OpenAI's `stop`


class AnthropicModel(BaseModel):
    """Unknown fields are ignored (`cache_control`, `citations`, `service_tier`, `container`, ...), never an error."""

    model_config = ConfigDict(extra="ignore")


def _unsupported(message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", message, context or None)


# ---------------------------------------------------------------------------------------------
# Content blocks
# ---------------------------------------------------------------------------------------------

_REFUSED_BLOCKS = {
    "image": "image blocks are not supported: Hearth serves text models",
    "document": "document blocks are not supported: Hearth serves text models; send the text as a text block",
    "search_result": "search_result blocks are not supported; send the text as a text block",
    "container_upload": "container_upload blocks are not supported (Hearth runs no containers)",
}
_SERVER_BLOCKS = ("server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
                  "bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
                  "tool_search_tool_result", "mcp_tool_use", "mcp_tool_result")


def _refuse_blocks(value: Any) -> Any:
    """Content as a list of blocks (a string is one text block), with a clear refusal for the blocks Hearth cannot
    read, before the union reports a mismatch."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if value is None:
        return []
    if not isinstance(value, list):
        raise PydanticCustomError("invalid_type", "content must be a string or a list of content blocks")
    for index, block in enumerate(value):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind in _REFUSED_BLOCKS:
            raise _unsupported("block {index}: " + _REFUSED_BLOCKS[kind], index=index)
        if kind in _SERVER_BLOCKS:
            raise _unsupported("block {index}: '{kind}' blocks belong to Anthropic's server tools, which Hearth does "
                               "not run", index=index, kind=kind)
    return value


class TextBlock(AnthropicModel):
    type: Literal["text"]
    text: str


class ToolUseBlock(AnthropicModel):
    """A call the assistant made in an earlier turn."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(AnthropicModel):
    """The result of a call, in a user turn: a string or text blocks."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: Annotated[list[TextBlock], BeforeValidator(_refuse_blocks)] = Field(
        default_factory=list, description="a string, or text blocks")
    is_error: bool | None = None

    def text(self) -> str:
        text = "\n".join(block.text for block in self.content)
        return f"Error: {text}" if self.is_error else text


class ThinkingBlock(AnthropicModel):
    """Extended thinking of an earlier assistant turn (Claude's): accepted and dropped."""

    type: Literal["thinking", "redacted_thinking"]


ContentBlock = Annotated[TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock, Field(discriminator="type")]
_ROLE_BLOCKS = {"user": ("text", "tool_result"), "assistant": ("text", "tool_use", "thinking", "redacted_thinking")}


class InputMessage(AnthropicModel):
    role: Literal["user", "assistant"]
    content: Annotated[list[ContentBlock], BeforeValidator(_refuse_blocks)] = Field(
        description="a string, or content blocks")

    @field_validator("content", mode="after")
    @classmethod
    def blocks_fit_the_role(cls, content: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        if role in _ROLE_BLOCKS:
            for index, block in enumerate(content):
                if block.type not in _ROLE_BLOCKS[role]:
                    raise PydanticCustomError(
                        "invalid_value", "block {index}: a {role} message cannot hold a '{kind}' block",
                        {"index": index, "role": role, "kind": block.type})
        return content

    def blocks(self) -> list[Any]:
        return list(self.content)


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------


class Tool(AnthropicModel):
    """A custom tool. Anthropic's own tool types (web search, bash, text editor, computer use, ...) are refused:
    their schemas and their execution are Anthropic's."""

    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, Any]

    @field_validator("type", mode="before")
    @classmethod
    def custom_tools_only(cls, value: Any) -> Any:
        if value is not None and value != "custom":
            raise _unsupported("'{kind}' is one of Anthropic's own tools, which Hearth does not run; describe a "
                               "custom tool (name, description, input_schema) instead", kind=str(value)[:64])
        return value

    def as_function(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "parameters": self.input_schema}
        if self.description is not None:
            function["description"] = self.description
        return {"type": "function", "function": function}


class ToolChoice(AnthropicModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, validate_default=True)
    disable_parallel_tool_use: bool | None = None

    @field_validator("name", mode="after")
    @classmethod
    def a_named_choice_has_a_name(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is None and info.data.get("type") == "tool":
            raise PydanticCustomError("missing", "tool_choice of type 'tool' needs the tool's name")
        return name

    def as_openai(self) -> str | dict[str, Any]:
        if self.type == "tool":
            return {"type": "function", "function": {"name": self.name}}
        return {"auto": "auto", "any": "required", "none": "none"}[self.type]

    def parallel_tool_calls(self) -> bool | None:
        return None if self.disable_parallel_tool_use is None else not self.disable_parallel_tool_use


SystemPrompt = Annotated[list[TextBlock], BeforeValidator(_refuse_blocks)]


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


class CountTokensRequest(AnthropicModel):
    """POST /v1/messages/count_tokens: what shapes the prompt (the Messages request without max_tokens)."""

    model: str
    messages: list[InputMessage] = Field(min_length=1)
    system: SystemPrompt | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = Field(default=None, description="accepted and ignored: no thinking blocks")

    @field_validator("messages", mode="after")
    @classmethod
    def ends_with_a_user_turn(cls, messages: list[InputMessage]) -> list[InputMessage]:
        if messages and messages[-1].role == "assistant":
            raise _unsupported("the last message is the assistant's (a prefill to continue); Hearth always starts "
                               "a new assistant turn, so end with a user message")
        return messages

    @field_validator("tool_choice", mode="after")
    @classmethod
    def tool_choice_names_a_tool(cls, choice: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        if choice is None or choice.type in ("auto", "none"):
            return choice
        names = [tool.name for tool in info.data.get("tools") or []]
        if not names:
            raise PydanticCustomError("invalid_value", "tool_choice '{kind}' needs tools", {"kind": choice.type})
        if choice.type == "tool" and choice.name not in names:
            raise PydanticCustomError("invalid_value", "tool_choice names '{name}', which is not among the tools",
                                      {"name": choice.name})
        return choice

    def system_text(self) -> str | None:
        return "\n".join(block.text for block in self.system) if self.system else None

    def openai_messages(self) -> list[dict[str, Any]]:
        """The conversation as OpenAI chat messages (see the module's docstring)."""
        messages: list[dict[str, Any]] = []
        if self.system_text() is not None:
            messages.append({"role": "system", "content": self.system_text()})
        for role, blocks in _turns(self.messages):
            messages.extend(_assistant_message(blocks) if role == "assistant" else _user_messages(blocks))
        return messages

    def _chat_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": self.model, "messages": self.openai_messages()}
        if self.tools:
            fields["tools"] = [tool.as_function() for tool in self.tools]
            if self.tool_choice is not None:
                fields["tool_choice"] = self.tool_choice.as_openai()
                fields["parallel_tool_calls"] = self.tool_choice.parallel_tool_calls()
        return fields

    def to_counting_request(self) -> ChatCompletionRequest:
        """The same prompt, for a job that only counts its tokens (max_tokens 0: see `PromptOnly`). A forced
        tool_choice renders the same prompt as auto; counting needs no grammar."""
        fields = self._chat_fields()
        if fields.get("tool_choice") not in (None, "none"):
            fields["tool_choice"] = "auto"
        fields.pop("parallel_tool_calls", None)
        return PromptOnly.model_validate({**fields, "max_tokens": 1})


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages."""

    max_tokens: int = Field(ge=0, description="0: the prompt is only read (counted), nothing is generated")
    metadata: dict[str, Any] | None = Field(default=None, description="accepted and ignored")
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP_SEQUENCES)
    stream: bool | None = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)

    # --- Hearth extension: not in Anthropic's API ---------------------------------------------
    backend: str | None = Field(default=None, max_length=64, description="force a backend by name")
    # --- end of Hearth extension --------------------------------------------------------------

    def to_chat_request(self) -> ChatCompletionRequest:
        """The chat request; max_tokens 0 (Anthropic's cache pre-warming) only reads the prompt: its job counts
        the prompt's tokens and generates nothing (it warms no cache here)."""
        if self.max_tokens == 0:
            return self.to_counting_request()
        fields = self._chat_fields()
        fields.update(max_tokens=self.max_tokens, stream=bool(self.stream), stop=self.stop_sequences,
                      temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, backend=self.backend)
        return ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})


class PromptOnly(ChatCompletionRequest):
    """A chat request whose job only reads its prompt: max_tokens 0 asks the worker for the prompt's token count
    alone, without decoding (inference/runner.py `_count_prompt`)."""

    def to_generation_request(self):
        return replace(super().to_generation_request(), max_tokens=0)


def _turns(messages: list[InputMessage]) -> list[tuple[str, list[Any]]]:
    """Consecutive messages of one role as one turn (Anthropic merges them too)."""
    turns: list[tuple[str, list[Any]]] = []
    for message in messages:
        if turns and turns[-1][0] == message.role:
            turns[-1][1].extend(message.blocks())
        else:
            turns.append((message.role, message.blocks()))
    return turns


def _assistant_message(blocks: list[Any]) -> list[dict[str, Any]]:
    texts = [block.text for block in blocks if block.type == "text"]
    calls = [{"id": block.id, "type": "function",
              "function": {"name": block.name, "arguments": json.dumps(block.input, ensure_ascii=False)}}
             for block in blocks if block.type == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _user_messages(blocks: list[Any]) -> list[dict[str, Any]]:
    """Tool results become `tool` messages; the text around them user messages, in their order."""
    messages: list[dict[str, Any]] = []
    texts: list[str] = []
    for block in blocks:
        if block.type == "tool_result":
            if texts:
                messages.append({"role": "user", "content": "\n".join(texts)})
                texts = []
            messages.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text()})
        else:
            texts.append(block.text)
    if texts or not messages:
        messages.append({"role": "user", "content": "\n".join(texts)})
    return messages


# ---------------------------------------------------------------------------------------------
# Responses and stream events (plain dicts, as they go on the wire)
# ---------------------------------------------------------------------------------------------

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


def stop_reason(engine_reason: str | None, stop_sequence: str | None = None) -> StopReason:
    """The engine ends with "stop" (an end-of-turn token, or one of the stop strings: then `stop_sequence` names
    it), "length" (max_tokens, 0 too, or the context) or "cancelled" (read as end_turn by a client that still
    listens)."""
    if engine_reason == "length":
        return "max_tokens"
    return "stop_sequence" if stop_sequence is not None else "end_turn"


def usage(prompt_tokens: int, output_tokens: int, cached_tokens: int = 0) -> dict[str, int]:
    """Anthropic counts the prompt in parts that add up: input_tokens (read now) + cache_read_input_tokens (found
    in the worker's prefix cache) + cache_creation_input_tokens (none: Hearth's cache costs nothing extra)."""
    cached = min(cached_tokens, prompt_tokens)
    return {"input_tokens": prompt_tokens - cached, "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call (api/tools.py) as a tool_use block; its id "call_X" becomes "toolu_X"."""
    function = call["function"]
    return {"type": "tool_use", "id": "toolu_" + call["id"].removeprefix("call_"), "name": function["name"],
            "input": json.loads(function["arguments"])}


def message(id: str, model: str, content: list[dict[str, Any]], stop: str | None, usage: dict[str, int],
            stop_sequence: str | None = None) -> dict[str, Any]:
    return {"id": id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": stop_sequence if stop == "stop_sequence" else None, "usage": usage}


def message_start(id: str, model: str, usage: dict[str, int]) -> dict[str, Any]:
    return {"type": "message_start", "message": message(id, model, [], None, usage)}


def content_block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def text_delta(index: int, text: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}


def input_json_delta(index: int, partial_json: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": partial_json}}


def content_block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(stop: str, usage: dict[str, int], stop_sequence: str | None = None) -> dict[str, Any]:
    return {"type": "message_delta", "usage": usage,
            "delta": {"stop_reason": stop, "stop_sequence": stop_sequence if stop == "stop_sequence" else None}}


PING = {"type": "ping"}
MESSAGE_STOP = {"type": "message_stop"}


def block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole block as stream events: its start (empty), one delta with all of it, its stop."""
    if block["type"] == "tool_use":
        return [content_block_start(index, {**block, "input": {}}),
                input_json_delta(index, json.dumps(block["input"], ensure_ascii=False)), content_block_stop(index)]
    return [content_block_start(index, text_block("")), text_delta(index, block["text"]), content_block_stop(index)]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_KEY_HINT = ("Missing or invalid API key. Send 'x-api-key: <key>' (or 'Authorization: Bearer <key>'); create a key "
             "with 'python manage.py create_api_key USERNAME'.")


def error_payload(status: int, message: str) -> dict[str, Any]:
    """{"type": "error", "error": {"type", "message"}}: the type by the status, as Anthropic's API sends them."""
    kind = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_body(status: int, openai_error: dict[str, Any]) -> dict[str, Any]:
    """api/dialects.py's hook: an OpenAI-shaped error of a /v1/messages path, in Anthropic's shape."""
    message = str(openai_error.get("message") or "Request failed.")
    if openai_error.get("code") == "invalid_api_key":
        message = _KEY_HINT
    return error_payload(status, message)


def stream_error(event: dict[str, Any]) -> dict[str, Any]:
    """A relay error event, as the `event: error` of a stream."""
    return error_payload(int(event.get("status") or 500), hide_paths(str(event.get("message") or "Generation failed.")))
