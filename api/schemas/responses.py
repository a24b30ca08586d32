"""OpenAI's Responses API (POST /v1/responses) as Hearth speaks it: the request, its translation into a chat
completion request, and the response object, its output items and its stream events.

The shapes are those of the OpenAI spec (openai/openai-openapi `openapi.yaml`: `CreateResponse`, `Response`,
`ResponseStreamEvent`, `ResponseItemList`) as the official `openai` client's types read them. A request becomes
an OpenAI `ChatCompletionRequest` (`chat_request`), validated as one, so that every rule of chat completions
(sampling ranges, tools, structured output, Hearth's extensions) applies unchanged; the router queues it as any
chat completion is queued.

Conversation items are kept in one canonical form (`input_items`): messages with their content as a list of
`input_text` (user, system, developer) or `output_text` (assistant) parts, `function_call` and
`function_call_output` items, each with an id. A stored response keeps the items its model read; its output
items are already in that form, so `previous_response_id` continues a conversation by concatenation.

What Hearth cannot do is refused by name (`InvalidInput`, a 400 naming the parameter): images, files and
audio in the input, built-in tools (web search, file search, computer use, code interpreter, MCP, ...),
`background`, `conversation`, `prompt` templates, `truncation: "auto"`, log probabilities. `reasoning`,
`include` (other than log probabilities), `service_tier`, `prompt_cache_key`, `safety_identifier` and
`text.verbosity` are accepted and have no effect (Hearth's models have no reasoning effort to set, and nothing
to include). `max_tool_calls` caps the calls a reply makes (those after it are dropped).
"""

from __future__ import annotations

import copy
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from api.schemas.openai import INT64_MAX, INT64_MIN, ChatCompletionRequest, OpenAIModel
from api.schemas.openai_output import validation_error_to_openai
from api.tools import CallStart, Delta, TextDelta, ToolCallStream
from inference.engine.base import EngineError

MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


class InvalidInput(Exception):
    """A request Hearth refuses: a 400 (or `status`) in OpenAI's envelope, naming the parameter."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value", status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def _unsupported(message: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", message)


# ---------------------------------------------------------------------------------------------------------
# The request


class TextConfig(OpenAIModel):
    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponseRequest(OpenAIModel):
    """POST /v1/responses. `input`, `tools`, `tool_choice` and `text.format` are checked item by item when the
    request is translated (`chat_request`), so that a refusal names e.g. `input[2].content[0]`."""

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    max_tool_calls: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stream: bool | None = False
    store: bool | None = True
    previous_response_id: str | None = Field(default=None, max_length=200)
    metadata: dict[str, str] | None = None
    user: str | None = None
    reasoning: dict[str, Any] | None = None  # accepted, no effect
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None

    # --- Hearth extensions: not in the OpenAI spec (as in chat completions) ------------------------------
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    top_k: int | None = Field(default=None, ge=-1, description="0 or -1: off")
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0, description="1.0: off")
    backend: str | None = Field(default=None, max_length=64, description="force a backend by name")
    # --- end of Hearth extensions -------------------------------------------------------------------------

    @field_validator("background")
    @classmethod
    def no_background(cls, value: bool | None) -> bool | None:
        if value:
            raise _unsupported("background responses are not supported; leave out 'background' and use "
                               "'stream' to follow a long answer")
        return value

    @field_validator("conversation")
    @classmethod
    def no_conversation(cls, value: Any) -> Any:
        if value is not None:
            raise _unsupported("the Conversations API is not served here; continue a conversation with "
                               "'previous_response_id'")
        return value

    @field_validator("prompt")
    @classmethod
    def no_prompt_template(cls, value: Any) -> Any:
        if value is not None:
            raise _unsupported("reusable prompt templates are not supported; send 'instructions' and 'input'")
        return value

    @field_validator("truncation")
    @classmethod
    def no_automatic_truncation(cls, value: str | None) -> str | None:
        if value == "auto":
            raise _unsupported("only 'disabled' is supported: an input over the model's context is a 400")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def no_logprobs(cls, value: int | None) -> int | None:
        if value:
            raise _unsupported("log probabilities are not offered by /v1/responses; use /v1/chat/completions "
                               "with 'logprobs'")
        return value

    @field_validator("include")
    @classmethod
    def no_logprobs_included(cls, value: list[str] | None) -> list[str] | None:
        if value and "message.output_text.logprobs" in value:
            raise _unsupported("log probabilities are not offered by /v1/responses; use /v1/chat/completions "
                               "with 'logprobs'")
        return value

    @field_validator("metadata")
    @classmethod
    def metadata_within_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > MAX_METADATA_PAIRS:
            raise PydanticCustomError("invalid_value", "at most {limit} key-value pairs",
                                      {"limit": MAX_METADATA_PAIRS})
        for key, text in value.items():
            if len(key) > MAX_METADATA_KEY or len(text) > MAX_METADATA_VALUE:
                raise PydanticCustomError(
                    "invalid_value", "keys are at most {key_limit} characters and values at most {value_limit}",
                    {"key_limit": MAX_METADATA_KEY, "value_limit": MAX_METADATA_VALUE})
        return value


# ---------------------------------------------------------------------------------------------------------
# Conversation items: one canonical form


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def derived_id(prefix: str, seed: str) -> str:
    """An id that the same seed always gives (a response's items: the stream and the stored copy agree)."""
    return f"{prefix}_{hashlib.sha256(seed.encode()).hexdigest()[:32]}"


_REFUSED_PARTS = {
    "input_image": "images",
    "input_file": "files",
    "input_audio": "audio",
}
_TEXT_PARTS = ("input_text", "output_text", "text", "refusal")


def _text_of_parts(parts: Any, param: str, *, what: str = "content") -> str:
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        raise InvalidInput(f"Invalid '{param}': {what} must be a string or a list of input_text parts.", param,
                           "invalid_type")
    texts = []
    for index, part in enumerate(parts):
        where = f"{param}[{index}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in _REFUSED_PARTS:
            raise InvalidInput(f"Invalid '{where}': {kind} parts are not supported: Hearth's models read text "
                               f"only, not {_REFUSED_PARTS[kind]}.", where, "unsupported_parameter")
        text = part.get("refusal" if kind == "refusal" else "text") if kind in _TEXT_PARTS else None
        if not isinstance(text, str):
            raise InvalidInput(f"Invalid '{where}': a content part must be of type input_text (or output_text) "
                               "with a string 'text'.", where, "invalid_value")
        texts.append(text)
    return "\n".join(texts)


def _string(item: Mapping[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if value is None:
        raise InvalidInput(f"Missing required parameter: '{param}.{key}'.", f"{param}.{key}",
                           "missing_required_parameter")
    if not isinstance(value, str):
        raise InvalidInput(f"Invalid '{param}.{key}': expected a string.", f"{param}.{key}", "invalid_type")
    return value


def _message(role: str, text: str, item_id: str, status: str = "completed") -> dict[str, Any]:
    if role == "assistant":
        return {"id": item_id, "type": "message", "role": "assistant", "status": status,
                "content": [output_text_part(text)]}
    return {"id": item_id, "type": "message", "role": role, "status": status,
            "content": [{"type": "input_text", "text": text}]}


def input_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's `input` as canonical items, each with an id (a string is one user message)."""
    if isinstance(value, str):
        return [_message("user", value, new_id("msg"))]
    return [_input_item(item, f"input[{index}]") for index, item in enumerate(value)]


def _input_item(item: Mapping[str, Any], param: str) -> dict[str, Any]:
    kind = item.get("type", "message" if "role" in item else None)
    given_id = item.get("id") if isinstance(item.get("id"), str) and item.get("id") else None
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise InvalidInput(f"Invalid '{param}.role': expected one of user, system, developer, assistant, got "
                               f"{role!r}.", f"{param}.role", "invalid_value")
        if "content" not in item:
            raise InvalidInput(f"Missing required parameter: '{param}.content'.", f"{param}.content",
                               "missing_required_parameter")
        text = _text_of_parts(item["content"], f"{param}.content")
        return _message(role, text, given_id or new_id("msg"))
    if kind == "function_call":
        arguments = item.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise InvalidInput(f"Invalid '{param}.arguments': expected a string of JSON.", f"{param}.arguments",
                               "invalid_type")
        return {"id": given_id or new_id("fc"), "type": "function_call", "status": "completed",
                "call_id": _string(item, "call_id", param), "name": _string(item, "name", param),
                "arguments": arguments}
    if kind == "function_call_output":
        if "output" not in item:
            raise InvalidInput(f"Missing required parameter: '{param}.output'.", f"{param}.output",
                               "missing_required_parameter")
        output = _text_of_parts(item["output"], f"{param}.output", what="output")
        return {"id": given_id or new_id("fco"), "type": "function_call_output", "status": "completed",
                "call_id": _string(item, "call_id", param), "output": output}
    if kind is None:
        raise InvalidInput(f"Missing required parameter: '{param}.type'.", f"{param}.type",
                           "missing_required_parameter")
    if kind == "item_reference":
        raise InvalidInput(f"Invalid '{param}': item references are not supported; send the item itself, or "
                           "continue a stored response with 'previous_response_id'.", param,
                           "unsupported_parameter")
    raise InvalidInput(f"Invalid '{param}.type': {kind!r} items are not supported here; Hearth reads message, "
                       "function_call and function_call_output items.", f"{param}.type", "unsupported_parameter")


def continued_items(stored_input: list[dict[str, Any]], stored_output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation of a stored response, to continue: what its model read, then what it answered."""
    return [*stored_input, *(item for item in stored_output if item.get("type") in ("message", "function_call"))]


# ---------------------------------------------------------------------------------------------------------
# Into a chat completion request


def chat_messages(instructions: str | None, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Canonical items as chat messages: instructions first as the system message; consecutive function calls
    one assistant turn (with the assistant text before them); outputs as tool messages."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        if item["type"] == "message":
            text = "\n".join(part.get("text") or part.get("refusal") or "" for part in item["content"])
            messages.append({"role": item["role"], "content": text})
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:  # function_call_output
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


BUILT_IN_TOOLS = ("web_search", "web_search_preview", "file_search", "computer_use_preview", "code_interpreter",
                  "image_generation", "mcp", "local_shell", "shell", "apply_patch", "custom")


def chat_tools(tools: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Responses' function tools ({type, name, description, parameters, strict}) as chat's."""
    converted = []
    for index, tool in enumerate(tools or ()):
        param = f"tools[{index}]"
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind != "function":
            why = ("Hearth runs no built-in tools" if kind in BUILT_IN_TOOLS or isinstance(kind, str) and
                   kind.startswith("web_search") else "only function tools are supported")
            raise InvalidInput(f"Invalid '{param}.type': {kind!r} tools are not supported: {why}; declare "
                               "functions (type 'function') and run them yourself.", f"{param}.type",
                               "unsupported_parameter")
        function = {"name": _string(tool, "name", param)}
        for key, kind, expected in (("description", str, "a string"), ("parameters", dict, "an object"),
                                    ("strict", bool, "a boolean")):
            value = tool.get(key)
            if value is None:
                continue
            if not isinstance(value, kind):
                raise InvalidInput(f"Invalid '{param}.{key}': expected {expected}.", f"{param}.{key}", "invalid_type")
            function[key] = value
        converted.append({"type": "function", "function": function})
    return converted


def chat_tool_choice(choice: str | dict[str, Any] | None, tools: Sequence[dict[str, Any]]) -> Any:
    if choice is None or isinstance(choice, str):
        if choice == "required" and not tools:
            raise InvalidInput("Invalid 'tool_choice': 'required' needs at least one function in 'tools'.",
                               "tool_choice", "invalid_value")
        return choice
    if choice.get("type") != "function":
        raise InvalidInput(f"Invalid 'tool_choice.type': {choice.get('type')!r} is not supported; use 'auto', "
                           "'none', 'required' or {\"type\": \"function\", \"name\": ...}.", "tool_choice.type",
                           "unsupported_parameter")
    name = _string(choice, "name", "tool_choice")
    if name not in {tool["function"]["name"] for tool in tools}:
        raise InvalidInput(f"Invalid 'tool_choice.name': no function {name!r} in 'tools'.", "tool_choice.name",
                           "invalid_value")
    return {"type": "function", "function": {"name": name}}


def chat_response_format(text: TextConfig | None) -> dict[str, Any] | None:
    """`text.format` as chat's `response_format`."""
    spec = text.format if text is not None else None
    if not spec:
        return None
    kind = spec.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        name = _string(spec, "name", "text.format")
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise InvalidInput("Missing required parameter: 'text.format.schema' (a JSON schema object).",
                               "text.format.schema", "missing_required_parameter")
        json_schema = {"name": name, "schema": schema}
        for key in ("description", "strict"):
            if spec.get(key) is not None:
                json_schema[key] = spec[key]
        return {"type": "json_schema", "json_schema": json_schema}
    raise InvalidInput(f"Invalid 'text.format.type': expected one of text, json_object, json_schema, got {kind!r}.",
                       "text.format.type", "invalid_value")


# chat's parameter -> the Responses API's, for errors raised while validating the translated request
RENAMED_PARAMS = {"max_completion_tokens": "max_output_tokens", "response_format": "text.format",
                  "messages": "input"}


def renamed_param(param: str | None) -> str | None:
    if not param:
        return param
    head, dot, rest = param.partition(".")
    return RENAMED_PARAMS.get(head, head) + dot + rest


def chat_request(body: ResponseRequest, items: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat completion request that answers `body` over the conversation `items` (canonical)."""
    if not items:
        raise InvalidInput("Invalid 'input': the conversation is empty; send at least one message.", "input",
                           "invalid_value")
    tools = chat_tools(body.tools)
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": chat_messages(body.instructions, items),
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stream": bool(body.stream),
        "user": body.user,
        "seed": body.seed, "top_k": body.top_k, "min_p": body.min_p, "repeat_penalty": body.repeat_penalty,
        "backend": body.backend,
    }
    if tools:
        fields.update(tools=tools, tool_choice=chat_tool_choice(body.tool_choice, tools),
                      parallel_tool_calls=body.parallel_tool_calls)
    else:
        chat_tool_choice(body.tool_choice, tools)
    response_format = chat_response_format(body.text)
    if response_format is not None:
        fields["response_format"] = response_format
    try:
        chat = ChatCompletionRequest.model_validate(fields)
    except ValidationError as error:
        refused = validation_error_to_openai(error)["error"]
        param = renamed_param(refused["param"])
        message = refused["message"].replace(f"'{refused['param']}'", f"'{param}'")
        raise InvalidInput(message, param, refused["code"] or "invalid_value") from None
    try:
        chat.structure()  # a schema the grammar cannot take is refused here, by its Responses name
    except EngineError as error:
        param = "tools" if chat.uses_tools() and body.tool_choice not in (None, "auto") else "text.format"
        message = error.message.replace("response_format.json_schema.schema", "text.format.schema")
        raise InvalidInput(message, param, "invalid_value") from None
    return chat


# ---------------------------------------------------------------------------------------------------------
# The response object, its items and its events


def echo(body: ResponseRequest) -> dict[str, Any]:
    """The request's settings as the response object repeats them (OpenAI's defaults where unset)."""
    tools = []
    for tool in body.tools or ():
        tools.append({"type": "function", "name": tool.get("name"), "description": tool.get("description"),
                      "parameters": tool.get("parameters"), "strict": tool.get("strict")})
    choice = body.tool_choice if body.tool_choice is not None else "auto"
    if isinstance(choice, dict):
        choice = {"type": "function", "name": choice.get("name")}
    text_format = (body.text.format if body.text is not None and body.text.format else None) or {"type": "text"}
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "model": body.model,
        "parallel_tool_calls": True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.store is not False,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "text": {"format": text_format, "verbosity": (body.text.verbosity if body.text else None) or "medium"},
        "tool_choice": choice,
        "tools": tools,
        "top_logprobs": 0,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "truncation": "disabled",
        "user": body.user,
        "metadata": body.metadata or {},
    }


def max_calls(body: ResponseRequest) -> int | None:
    """How many calls a reply may make: one without parallel calls, else up to `max_tool_calls`."""
    return 1 if body.parallel_tool_calls is False else body.max_tool_calls


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """`cached_tokens`: the prompt tokens the worker's prefix cache held; `cache_write_tokens`: the others, which
    it computed and keeps for the conversation's next turn."""
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": prompt_tokens - cached_tokens},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response_object(response_id: str, created_at: int, settings: Mapping[str, Any], *, status: str,
                    output: list[dict[str, Any]] | None = None, usage: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None, completed_at: int | None = None) -> dict[str, Any]:
    """The `Response` object (fields in the order OpenAI sends them). `output_text` is not sent: it is the
    client libraries' convenience, computed from `output`."""
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": incomplete,
        **{key: settings[key] for key in ("instructions", "max_output_tokens", "max_tool_calls", "model")},
        "output": output or [],
        **{key: settings[key] for key in ("parallel_tool_calls", "previous_response_id", "reasoning",
                                          "service_tier", "store", "temperature", "text", "tool_choice", "tools",
                                          "top_logprobs", "top_p", "truncation")},
        # Optional in the spec and never null there: left out until known (the first events), as `user` when unset.
        **({"usage": usage} if usage is not None else {}),
        **({"user": settings["user"]} if settings["user"] is not None else {}),
        "metadata": settings["metadata"],
    }


def status_of(finish_reason: str | None) -> str:
    """The engine's finish reason as a response status: the token budget (max_output_tokens, or the context
    full) is "incomplete"; a job cancelled from elsewhere "cancelled"."""
    if finish_reason == "length":
        return "incomplete"
    if finish_reason == "cancelled":
        return "cancelled"
    return "completed"


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """An output message; `text` None: the message has just begun (no content part yet)."""
    content = [] if text is None else [output_text_part(text)]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id,
            "name": name}


class OutputStream:
    """What the model writes, as output items and the events that build them, as it comes.

    Without tools the text is one message. With tools it goes through api/tools.py's `ToolCallStream`, the
    reader chat completions use: text outside the calls becomes one message (opened when its first text comes),
    each call a function_call item whose arguments stream as they are written. Items are numbered in the order
    they begin. `feed(text)` and `finish(finish_reason)` return event payloads (without `sequence_number`);
    `items` is the output. A whole answer is one `feed` and the `finish`: the same reading, so a streamed
    answer and a whole one agree (a call cut off by the token budget is the exception: a stream has sent its
    beginning, and ends it "incomplete"; a whole answer leaves it out, as chat completions do)."""

    def __init__(self, response_id: str, tools: Sequence[dict[str, Any]] | None = None, *,
                 max_calls: int | None = None):
        self.response_id = response_id
        self.reader = ToolCallStream(tools, id_seed=response_id, max_calls=max_calls) if tools else None
        self.items: list[dict[str, Any]] = []
        self.message: int | None = None  # the message's output index
        self.calls: dict[int, int] = {}  # a call's index among the calls -> its output index
        self.finished = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        if self.reader is None:
            return self._text(text) if text else []
        return [payload for delta in self.reader.feed(text) for payload in self._delta(delta)]

    def finish(self, finish_reason: str | None) -> list[dict[str, Any]]:
        """The last deltas, then every item done (a message cut by the budget "incomplete")."""
        events = [payload for delta in (self.reader.finish() if self.reader else ()) for payload in self._delta(delta)]
        if not self.items:
            events += self._open_message()  # an empty answer is an empty message
        complete = {call.index for call in self.reader.calls()} if self.reader else set()
        ended = "incomplete" if status_of(finish_reason) == "incomplete" else "completed"
        for index, item in enumerate(self.items):
            if item["type"] == "message":
                item["status"] = ended
                text = item["content"][0]["text"]
                events += [{"type": "response.output_text.done", "item_id": item["id"], "output_index": index,
                            "content_index": 0, "text": text, "logprobs": []},
                           {"type": "response.content_part.done", "item_id": item["id"], "output_index": index,
                            "content_index": 0, "part": output_text_part(text)}]
            else:
                call = next(i for i, position in self.calls.items() if position == index)
                item["status"] = "completed" if call in complete else "incomplete"
                events.append({"type": "response.function_call_arguments.done", "item_id": item["id"],
                               "output_index": index, "name": item["name"], "arguments": item["arguments"]})
            events.append({"type": "response.output_item.done", "output_index": index, "item": copy.deepcopy(item)})
        self.finished = True
        return events

    def _delta(self, delta: Delta) -> list[dict[str, Any]]:
        if isinstance(delta, TextDelta):
            return self._text(delta.text)
        if isinstance(delta, CallStart):
            item = function_call_item(derived_id("fc", f"{self.response_id}:{delta.index}"), delta.id, delta.name,
                                      "", "in_progress")
            self.calls[delta.index] = len(self.items)
            self.items.append(item)
            return [{"type": "response.output_item.added", "output_index": self.calls[delta.index],
                     "item": copy.deepcopy(item)}]
        index = self.calls[delta.index]
        self.items[index]["arguments"] += delta.text
        return [{"type": "response.function_call_arguments.delta", "item_id": self.items[index]["id"],
                 "output_index": index, "delta": delta.text}]

    def _open_message(self) -> list[dict[str, Any]]:
        self.message = len(self.items)
        item = message_item(derived_id("msg", self.response_id), None, "in_progress")
        self.items.append(item)
        added = {"type": "response.output_item.added", "output_index": self.message, "item": copy.deepcopy(item)}
        item["content"].append(output_text_part(""))
        return [added, {"type": "response.content_part.added", "item_id": item["id"], "output_index": self.message,
                        "content_index": 0, "part": output_text_part("")}]

    def _text(self, text: str) -> list[dict[str, Any]]:
        events = self._open_message() if self.message is None else []
        item = self.items[self.message]
        item["content"][0]["text"] += text
        return [*events, {"type": "response.output_text.delta", "item_id": item["id"], "output_index": self.message,
                          "content_index": 0, "delta": text, "logprobs": []}]


def output_items(response_id: str, text: str, finish_reason: str | None,
                 tools: Sequence[dict[str, Any]] | None = None, *, max_calls: int | None = None
                 ) -> list[dict[str, Any]]:
    """A whole answer's output items (see `OutputStream`)."""
    output = OutputStream(response_id, tools, max_calls=max_calls)
    output.feed(text)
    output.finish(finish_reason)
    return output.items


def failure(status: int, message: str) -> dict[str, Any]:
    """A response's `error` for a generation that failed (the spec's codes)."""
    code = "rate_limit_exceeded" if status == 429 else "invalid_prompt" if 400 <= status < 500 else "server_error"
    return {"code": code, "message": message}


def deleted(response_id: str) -> dict[str, Any]:
    return {"id": response_id, "object": "response.deleted", "deleted": True}


def item_list(items: Sequence[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """`ResponseItemList`: a page of a stored response's input items."""
    return {"object": "list", "data": list(items), "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}

