"""The OpenAI API's requests as Hearth reads them: chat completions, text completions, embeddings.

The shapes are those of the OpenAI spec (openai/openai-openapi `openapi.yaml`: the
`CreateChatCompletionRequest`, `CreateCompletionRequest` and `CreateEmbeddingRequest` schemas),
fields in the order of OpenAI's API reference; Hearth's own extensions sit in a fenced block at
the end of each request. What Hearth answers (response objects, stream chunks, errors) is in
api/schemas/openai_output.py.

Requests are plain pydantic models (no Django), so the worker, the tests and django-ninja can all
use them. Unknown fields are ignored, never an error. Parameters Hearth cannot honour yet fail
validation by name (see `UNSUPPORTED_PARAMETERS`), rather than being silently dropped. Every dialect
(Responses, Anthropic, Ollama) translates its request into these, so `to_generation_request()` is the
one way a request becomes the engine's `GenerationRequest`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
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

    @field_validator("tools", mode="after")
    @classmethod
    def tools_are_functions(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for index, tool in enumerate(tools or ()):
            if tool.get("type", "function") != "function":
                raise _unsupported(f"tools[{index}]: only tools of type 'function' are supported")
            function = tool.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
                raise PydanticCustomError(
                    "invalid_value", "tools[{index}] must be {\"type\": \"function\", \"function\": {\"name\": "
                    "<string>, \"parameters\": <JSON schema object>}}", {"index": index})
            if not isinstance(function.get("parameters", {}), dict):
                raise PydanticCustomError("invalid_value", "tools[{index}].function.parameters must be a JSON schema "
                                          "object", {"index": index})
        return tools

    @field_validator("tool_choice", mode="after")
    @classmethod
    def tool_choice_names_a_given_function(cls, choice: str | dict[str, Any] | None, info: ValidationInfo
                                           ) -> str | dict[str, Any] | None:
        if isinstance(choice, str) and choice not in ("none", "auto", "required"):
            raise PydanticCustomError("invalid_value", "tool_choice must be 'none', 'auto', 'required' or "
                                      "{\"type\": \"function\", \"function\": {\"name\": <one of tools>}}")
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
            names = {(tool.get("function") or {}).get("name") for tool in info.data.get("tools") or ()}
            if choice.get("type", "function") != "function" or not isinstance(name, str):
                raise PydanticCustomError("invalid_value", "a tool_choice object must be "
                                          "{\"type\": \"function\", \"function\": {\"name\": <one of tools>}}")
            if name not in names:
                raise PydanticCustomError("invalid_value", "tool_choice names the function '{name}', which is not "
                                          "in tools", {"name": name})
        return choice

    def uses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

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
        """The messages as plain dicts for the chat template, and the tools when the model may call them: the
        worker gives them to a template that reads `tools`, else describes them in the system message
        (inference/engine/chat_template.py `render_chat`)."""
        extras = {"structure": self.structure(), "logprobs": self.logprob_alternatives()}
        return GenerationRequest(
            messages=[message.to_engine_message() for message in self.messages],
            tools=self.tools if self.uses_tools() else None,
            sampling=self.to_sampling_params(),
            max_tokens=self.effective_max_tokens(),
            stop=self.stop_list(),
            n=self.n or 1,
            **extras,
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
