"""The OpenAI request schemas (api/schemas/openai.py) and response, chunk and error builders
(api/schemas/openai_output.py), read against the OpenAI spec (openapi.yaml)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from api.schemas import openai as schemas
from api.schemas import openai_output as output
from api.schemas.openai import ChatCompletionRequest, CompletionRequest
from inference.engine.base import GenerationRequest
from inference.engine.sampling import SamplingParams

HELLO = [{"role": "user", "content": "Hello"}]


def chat(**fields) -> dict:
    return {"model": "gemma-3-270m", "messages": HELLO, **fields}


def text(**fields) -> dict:
    return {"model": "gemma-3-270m", "prompt": "Once upon a time", **fields}


def openai_error(request_class, body: dict) -> dict:
    with pytest.raises(ValidationError) as caught:
        request_class.model_validate(body)
    return output.validation_error_to_openai(caught.value)["error"]


# --- requests that parse -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        chat(),
        chat(
            frequency_penalty=-2,
            logit_bias={"50256": -100, "13": 100},
            logprobs=False,
            top_logprobs=0,
            max_tokens=32,
            max_completion_tokens=64,
            n=1,
            presence_penalty=2,
            response_format={"type": "text"},
            seed=-(2**63),
            stop=["\n", "###", "User:", "</s>"],
            stream=True,
            stream_options={"include_usage": True},
            temperature=0,
            top_p=1,
            tools=[],
            tool_choice="none",
            user="user-1234",
            parallel_tool_calls=True,
            top_k=40,
            min_p=0.05,
            repeat_penalty=1.1,
            backend="llama.cpp",
        ),
        chat(temperature=None, top_p=None, n=None, stop=None, logit_bias=None, stream=None),
        chat(stop="\n"),
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]),
        chat(
            messages=[
                {"role": "developer", "content": "Be brief."},
                {"role": "system", "content": "You are Hearth.", "name": "setup"},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function"}]},
                {"role": "tool", "content": "Sunny", "tool_call_id": "call_1"},
            ]
        ),
        text(),
        text(prompt=""),
        text(prompt=["Once upon a time"], echo=False, suffix=None, logprobs=None, best_of=1, max_tokens=None),
    ],
    ids=[
        "minimal chat",
        "every chat parameter",
        "explicit nulls",
        "stop as a string",
        "text content parts",
        "every role",
        "minimal completion",
        "empty prompt",
        "completion defaults spelled out",
    ],
)
def test_it_accepts_a_valid_request(body):
    request_class = ChatCompletionRequest if "messages" in body else CompletionRequest

    request = request_class.model_validate(body)

    assert request.model == "gemma-3-270m"


def test_it_accepts_a_request_as_json_text():
    request = ChatCompletionRequest.model_validate_json(json.dumps(chat(logit_bias={"7": 5})))

    assert request.to_sampling_params().logit_bias == {7: 5.0}


def test_it_ignores_unknown_fields():
    request = ChatCompletionRequest.model_validate(
        chat(store=True, metadata={"k": "v"}, service_tier="auto", reasoning_effort="low", made_up=[1, 2])
    )

    assert not hasattr(request, "made_up")
    assert "store" not in request.model_dump()


# --- requests that do not ----------------------------------------------------------------------------

INVALID_REQUESTS = [
    # (request class, body, param named, OpenAI error code)
    (ChatCompletionRequest, chat(temperature=3), "temperature", "invalid_value"),
    (ChatCompletionRequest, chat(temperature=-0.1), "temperature", "invalid_value"),
    (ChatCompletionRequest, chat(temperature="hot"), "temperature", "invalid_type"),
    (ChatCompletionRequest, chat(top_p=0), "top_p", "invalid_value"),
    (ChatCompletionRequest, chat(top_p=1.5), "top_p", "invalid_value"),
    (ChatCompletionRequest, chat(frequency_penalty=2.5), "frequency_penalty", "invalid_value"),
    (ChatCompletionRequest, chat(presence_penalty=-3), "presence_penalty", "invalid_value"),
    (ChatCompletionRequest, chat(top_logprobs=21), "top_logprobs", "invalid_value"),
    (ChatCompletionRequest, chat(max_tokens=0), "max_tokens", "invalid_value"),
    (ChatCompletionRequest, chat(max_completion_tokens="many"), "max_completion_tokens", "invalid_type"),
    (ChatCompletionRequest, chat(seed=2**64), "seed", "invalid_value"),
    (ChatCompletionRequest, chat(messages=[]), "messages", "invalid_value"),
    (ChatCompletionRequest, chat(messages="Hello"), "messages", "invalid_type"),
    (ChatCompletionRequest, {"messages": HELLO}, "model", "missing_required_parameter"),
    (ChatCompletionRequest, {"model": "m"}, "messages", "missing_required_parameter"),
    (
        ChatCompletionRequest,
        chat(messages=[{"role": "robot", "content": "beep"}]),
        "messages.0.role",
        "invalid_value",
    ),
    (
        ChatCompletionRequest,
        chat(messages=[{"role": "user"}]),
        "messages.0.content",
        "missing_required_parameter",
    ),
    (ChatCompletionRequest, chat(stop=["a", "b", "c", "d", "e"]), "stop", "invalid_value"),
    (ChatCompletionRequest, chat(stop=5), "stop", "invalid_type"),
    (ChatCompletionRequest, chat(logit_bias={"50256": 200}), "logit_bias.50256", "invalid_value"),
    (ChatCompletionRequest, chat(logit_bias={"hello": 1}), "logit_bias", "invalid_value"),
    (ChatCompletionRequest, chat(logit_bias={"-5": 1}), "logit_bias", "invalid_value"),
    (ChatCompletionRequest, chat(logit_bias={"²": 1}), "logit_bias", "invalid_value"),
    (
        ChatCompletionRequest,
        chat(stream_options={"include_usage": "yes please"}),
        "stream_options.include_usage",
        "invalid_type",
    ),
    (ChatCompletionRequest, chat(top_k=-2), "top_k", "invalid_value"),
    (ChatCompletionRequest, chat(min_p=1.5), "min_p", "invalid_value"),
    (ChatCompletionRequest, chat(repeat_penalty=0), "repeat_penalty", "invalid_value"),
    (CompletionRequest, {"model": "m"}, "prompt", "missing_required_parameter"),
    (CompletionRequest, text(prompt=[]), "prompt", "invalid_value"),
    (CompletionRequest, text(prompt=None), "prompt", "invalid_type"),
    (CompletionRequest, text(temperature=2.01), "temperature", "invalid_value"),
    (CompletionRequest, text(logprobs=6), "logprobs", "invalid_value"),
    (CompletionRequest, text(stop=["1", "2", "3", "4", "5"]), "stop", "invalid_value"),
]


@pytest.mark.parametrize("request_class, body, param, code", INVALID_REQUESTS)
def test_it_rejects_an_invalid_value_naming_the_parameter(request_class, body, param, code):
    error = openai_error(request_class, body)

    assert error["param"] == param
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert f"'{param}'" in error["message"]


UNSUPPORTED = [
    # (request class, body, param named, words the message must say)
    (
        ChatCompletionRequest,
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]),
        "messages.0.content",
        "image inputs are not supported",
    ),
    (
        ChatCompletionRequest,
        chat(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
        "messages.0.content",
        "audio inputs are not supported",
    ),
    (CompletionRequest, text(best_of=2), "best_of", "best_of=1"),
    (CompletionRequest, text(echo=True), "echo", "echo"),
    (CompletionRequest, text(suffix="The end."), "suffix", "suffix"),
    (CompletionRequest, text(prompt=[1212, 318, 257]), "prompt", "token-id prompts"),
]


@pytest.mark.parametrize("request_class, body, param, words", UNSUPPORTED)
def test_it_refuses_a_parameter_it_cannot_honour_yet(request_class, body, param, words):
    error = openai_error(request_class, body)

    assert error["param"] == param
    assert error["code"] == "unsupported_parameter"
    assert words in error["message"]


def test_every_unsupported_parameter_has_a_row_in_the_table_above():
    refused = {param.split(".")[0] for _, _, param, _ in UNSUPPORTED} - {"messages", "prompt"}

    assert refused == set(schemas.UNSUPPORTED_PARAMETERS)


def test_it_names_the_first_of_several_errors():
    error = openai_error(ChatCompletionRequest, chat(temperature=5, top_p=0))

    assert error["param"] == "temperature"


def test_it_reads_errors_in_django_ninjas_shape():
    errors = [
        {"type": "less_than_equal", "loc": ("body", "payload", "temperature"), "msg": "too hot", "input": 9}
    ]

    error = output.validation_error_to_openai(errors, skip_loc=2)["error"]

    assert error["param"] == "temperature"
    assert error["message"] == "Invalid 'temperature': too hot. Got 9."


def test_it_says_so_when_the_body_is_not_an_object():
    error = openai_error(ChatCompletionRequest, ["not", "an", "object"])

    assert error["param"] is None
    assert error["message"].startswith("Invalid request body")


# --- what the engine receives ------------------------------------------------------------------------


def test_it_maps_every_sampling_parameter():
    request = ChatCompletionRequest.model_validate(
        chat(
            temperature=0.7,
            top_p=0.9,
            top_k=40,
            min_p=0.05,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            repeat_penalty=1.1,
            logit_bias={"15": -100, "1000": 2.5},
            seed=42,
        )
    )

    assert request.to_sampling_params() == SamplingParams(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repeat_penalty=1.1,
        logit_bias={15: -100.0, 1000: 2.5},
        seed=42,
    )


@pytest.mark.parametrize(
    "body",
    [chat(), chat(temperature=None, top_p=None, presence_penalty=None, logit_bias=None), text()],
    ids=["absent", "null", "completion"],
)
def test_it_samples_with_openais_defaults_when_nothing_is_set(body):
    request_class = ChatCompletionRequest if "messages" in body else CompletionRequest

    params = request_class.model_validate(body).to_sampling_params()

    assert params == SamplingParams(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0)


def test_it_reads_vllms_minus_one_as_top_k_off():
    assert ChatCompletionRequest.model_validate(chat(top_k=-1)).to_sampling_params().top_k == 0


def test_it_keeps_temperature_zero_as_greedy():
    assert ChatCompletionRequest.model_validate(chat(temperature=0)).to_sampling_params().greedy


@pytest.mark.parametrize(
    "request_class, fields, expected",
    [
        (ChatCompletionRequest, {}, None),
        (ChatCompletionRequest, {"max_tokens": 100}, 100),
        (ChatCompletionRequest, {"max_completion_tokens": 50}, 50),
        (ChatCompletionRequest, {"max_tokens": 100, "max_completion_tokens": 50}, 50),
        (ChatCompletionRequest, {"max_tokens": 100, "max_completion_tokens": None}, 100),
        (CompletionRequest, {}, 16),
        (CompletionRequest, {"max_tokens": 200}, 200),
        (CompletionRequest, {"max_tokens": None}, None),
    ],
)
def test_it_takes_max_completion_tokens_over_max_tokens(request_class, fields, expected):
    body = chat(**fields) if request_class is ChatCompletionRequest else text(**fields)

    assert request_class.model_validate(body).effective_max_tokens() == expected


@pytest.mark.parametrize(
    "stop, expected",
    [(None, ()), ("\n", ("\n",)), (["a", "b"], ("a", "b")), (["", "x"], ("x",)), ([], ())],
)
def test_it_lists_the_stop_sequences(stop, expected):
    assert ChatCompletionRequest.model_validate(chat(stop=stop)).stop_list() == expected


def test_it_joins_text_content_parts_with_newlines():
    parts = [{"type": "text", "text": "First line"}, {"type": "text", "text": "second line"}]

    request = ChatCompletionRequest.model_validate(chat(messages=[{"role": "user", "content": parts}]))

    assert request.messages[0].content == "First line\nsecond line"


def test_it_builds_the_engine_request_for_a_chat():
    request = ChatCompletionRequest.model_validate(
        chat(
            messages=[
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "Hi", "name": "ana"},
            ],
            max_completion_tokens=8,
            stop="\n",
            temperature=0,
        )
    )

    assert request.to_generation_request() == GenerationRequest(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi", "name": "ana"},
        ],
        sampling=SamplingParams(temperature=0.0),
        max_tokens=8,
        stop=("\n",),
    )


@pytest.mark.parametrize(
    "message, expected",
    [
        ({"role": "developer", "content": "Be brief."}, {"role": "system", "content": "Be brief."}),
        ({"role": "assistant", "content": None}, {"role": "assistant", "content": ""}),
        (
            {"role": "assistant", "tool_calls": [{"id": "call_1"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1"}]},
        ),
        (
            {"role": "tool", "content": "Sunny", "tool_call_id": "call_1"},
            {"role": "tool", "content": "Sunny", "tool_call_id": "call_1"},
        ),
    ],
)
def test_it_hands_the_chat_template_plain_message_dicts(message, expected):
    assert schemas.ChatMessage.model_validate(message).to_engine_message() == expected


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def test_it_hands_the_tools_to_the_engine_beside_the_messages():
    """The worker gives them to a chat template that reads `tools`, or describes them (inference/engine)."""
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                     "function": {"name": "get_weather", "arguments": "{}"}}]},
               {"role": "tool", "content": "Sunny", "tool_call_id": "call_1"}]

    engine = ChatCompletionRequest.model_validate(chat(messages=history, tools=[WEATHER])).to_generation_request()

    assert engine.tools == [WEATHER]
    assert engine.messages == [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": history[1]["tool_calls"]},
        {"role": "tool", "content": "Sunny", "tool_call_id": "call_1"},
    ]
    assert engine.structure is None  # "auto": the model may answer or call


@pytest.mark.parametrize("tool_choice, parallel, calls", [
    ("required", None, False), ({"type": "function", "function": {"name": "get_weather"}}, None, False),
    ("required", True, True), ("required", False, False),
])
def test_a_forced_tool_call_is_one_call_unless_parallel_calls_are_asked_for(tool_choice, parallel, calls):
    engine = ChatCompletionRequest.model_validate(chat(tools=[WEATHER], tool_choice=tool_choice,
                                                       parallel_tool_calls=parallel)).to_generation_request()
    assert engine.structure["type"] == "tool_calls" and engine.structure["parallel"] is calls


def test_tool_choice_none_leaves_the_tools_out():
    engine = ChatCompletionRequest.model_validate(chat(tools=[WEATHER], tool_choice="none")).to_generation_request()
    assert engine.tools is None and engine.structure is None


def test_it_builds_the_engine_request_for_a_text_completion():
    request = CompletionRequest.model_validate(text(prompt=["Once"], stop=["."], seed=1))

    assert request.to_generation_request() == GenerationRequest(
        prompt="Once", sampling=SamplingParams(seed=1), max_tokens=16, stop=(".",)
    )


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({}, False),
        ({"stream": True}, False),
        ({"stream": True, "stream_options": {"include_usage": False}}, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
        ({"stream": False, "stream_options": {"include_usage": True}}, False),
    ],
)
def test_it_includes_usage_only_in_streams_that_ask_for_it(fields, expected):
    assert ChatCompletionRequest.model_validate(chat(**fields)).include_usage() is expected


# --- responses: exactly the keys of OpenAI's schemas -------------------------------------------------

# From openapi.yaml: CreateChatCompletionResponse, CreateChatCompletionStreamResponse,
# CreateCompletionResponse, CompletionUsage, ChatCompletionResponseMessage, Error.
CHAT_COMPLETION_KEYS = {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"}
CHAT_CHOICE_KEYS = {"index", "message", "logprobs", "finish_reason"}
CHAT_MESSAGE_KEYS = {"role", "content", "refusal"}
CHUNK_KEYS = {"id", "object", "created", "model", "system_fingerprint", "choices"}
CHUNK_CHOICE_KEYS = {"index", "delta", "logprobs", "finish_reason"}
COMPLETION_KEYS = {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
COMPLETION_CHOICE_KEYS = {"text", "index", "logprobs", "finish_reason"}
USAGE_KEYS = {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"}
ERROR_KEYS = {"message", "type", "param", "code"}

ID, CREATED, MODEL = "chatcmpl-1", 1_700_000_000, "gemma-3-270m"


def test_it_builds_a_chat_completion_with_the_specs_keys():
    body = output.chat_completion(
        ID, CREATED, MODEL, content="Hi!", finish_reason="stop", prompt_tokens=7, completion_tokens=3
    )

    assert set(body) == CHAT_COMPLETION_KEYS
    assert body["object"] == "chat.completion"
    [choice] = body["choices"]
    assert set(choice) == CHAT_CHOICE_KEYS
    assert set(choice["message"]) == CHAT_MESSAGE_KEYS
    assert choice["message"] == {"role": "assistant", "content": "Hi!", "refusal": None}
    assert choice["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                             "prompt_tokens_details": {"cached_tokens": 0}}


@pytest.mark.parametrize(
    "fields, delta, finish_reason",
    [
        ({"role": "assistant", "content": ""}, {"role": "assistant", "content": ""}, None),
        ({"content": "Hel"}, {"content": "Hel"}, None),
        ({"finish_reason": "length"}, {}, "length"),
    ],
    ids=["role chunk", "content chunk", "finish chunk"],
)
def test_it_builds_chat_chunks_with_the_specs_keys(fields, delta, finish_reason):
    chunk = output.chat_chunk(ID, CREATED, MODEL, **fields)

    assert set(chunk) == CHUNK_KEYS
    assert chunk["object"] == "chat.completion.chunk"
    [choice] = chunk["choices"]
    assert set(choice) == CHUNK_CHOICE_KEYS
    assert choice["delta"] == delta
    assert choice["finish_reason"] == finish_reason
    assert choice["logprobs"] is None


def test_it_gives_every_chunk_a_null_usage_when_usage_was_asked_for():
    chunk = output.chat_chunk(ID, CREATED, MODEL, content="x", include_usage=True)

    assert set(chunk) == CHUNK_KEYS | {"usage"}
    assert chunk["usage"] is None


def test_it_ends_a_stream_with_a_usage_chunk_without_choices():
    chunk = output.usage_chunk(ID, CREATED, MODEL, prompt_tokens=5, completion_tokens=2)

    assert set(chunk) == CHUNK_KEYS | {"usage"}
    assert chunk["choices"] == []
    assert set(chunk["usage"]) == USAGE_KEYS
    assert chunk["usage"]["total_tokens"] == 7


def test_it_builds_a_text_completion_with_the_specs_keys():
    body = output.completion(
        "cmpl-1",
        CREATED,
        MODEL,
        text=" there was",
        finish_reason="length",
        prompt_tokens=4,
        completion_tokens=16,
    )

    assert set(body) == COMPLETION_KEYS
    assert body["object"] == "text_completion"
    [choice] = body["choices"]
    assert set(choice) == COMPLETION_CHOICE_KEYS
    assert choice == {"text": " there was", "index": 0, "logprobs": None, "finish_reason": "length"}


def test_it_streams_text_completions_as_text_completion_objects():
    chunk = output.completion_chunk("cmpl-1", CREATED, MODEL, text=" there")
    last = output.usage_chunk("cmpl-1", CREATED, MODEL, prompt_tokens=4, completion_tokens=1, object="text_completion")

    assert set(chunk) == COMPLETION_KEYS - {"usage"}
    assert chunk["object"] == last["object"] == "text_completion"
    assert set(chunk["choices"][0]) == COMPLETION_CHOICE_KEYS
    assert chunk["choices"][0]["finish_reason"] is None
    assert last["choices"] == []
    assert set(last["usage"]) == USAGE_KEYS


BUILT = [
    (
        output.ChatCompletion,
        output.chat_completion(
            ID, CREATED, MODEL, content="Hi", finish_reason="stop", prompt_tokens=1, completion_tokens=1
        ),
    ),
    (output.ChatCompletionChunk, output.chat_chunk(ID, CREATED, MODEL, role="assistant", content="")),
    (output.ChatCompletionChunk, output.chat_chunk(ID, CREATED, MODEL, content="Hi", include_usage=True)),
    (
        output.ChatCompletionChunk,
        output.chat_chunk(ID, CREATED, MODEL, finish_reason="stop", system_fingerprint="fp_1"),
    ),
    (
        output.ChatCompletionChunk,
        output.usage_chunk(ID, CREATED, MODEL, prompt_tokens=1, completion_tokens=1),
    ),
    (
        output.Completion,
        output.completion(
            ID, CREATED, MODEL, text="Hi", finish_reason="stop", prompt_tokens=1, completion_tokens=1
        ),
    ),
    (output.CompletionChunk, output.completion_chunk(ID, CREATED, MODEL, text="Hi", include_usage=True)),
    (
        output.CompletionChunk,
        output.usage_chunk(ID, CREATED, MODEL, prompt_tokens=1, completion_tokens=1, object="text_completion"),
    ),
    (output.ErrorResponse, output.error_body("No such model", param="model", code="model_not_found")),
    (
        output.ChatCompletion,
        output.chat_completion(ID, CREATED, MODEL, content=None, finish_reason="tool_calls", prompt_tokens=1,
                               completion_tokens=1,
                               tool_calls=[output.tool_call("call_1", "get_weather", '{"city": "Oslo"}')]),
    ),
    (output.ChatCompletionChunk,
     output.chat_chunk(ID, CREATED, MODEL, tool_calls=[output.tool_call_start(0, "call_1", "get_weather")])),
    (output.ChatCompletionChunk,
     output.chat_chunk(ID, CREATED, MODEL, tool_calls=[output.tool_call_arguments(0, '{"city": ')])),
]


@pytest.mark.parametrize(
    "response_model, body", BUILT, ids=[f"{m.__name__}-{i}" for i, (m, _) in enumerate(BUILT)]
)
def test_the_response_models_describe_exactly_what_the_builders_send(response_model, body):
    assert response_model.model_validate(body).model_dump(mode="json", exclude_unset=True) == body


def test_it_lists_models_in_the_specs_shape():
    models = output.ModelList(data=[output.Model(id="gemma-3-270m", created=CREATED, owned_by="hearth")])

    assert models.model_dump() == {
        "object": "list",
        "data": [{"id": "gemma-3-270m", "object": "model", "created": CREATED, "owned_by": "hearth"}],
    }


def test_it_wraps_errors_in_the_specs_envelope():
    body = output.error_body("The model `x` does not exist", param="model", code="model_not_found")

    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "engine, openai", [("stop", "stop"), ("length", "length"), ("cancelled", "stop"), (None, None)]
)
def test_it_translates_the_engines_finish_reasons(engine, openai):
    assert output.openai_finish_reason(engine) == openai


def _official_client_types():
    openai = pytest.importorskip("openai")  # a dev dependency: the client our users run
    return openai.types


# The client reads a streamed text completion chunk into its `Completion` type without validating
# it; there `finish_reason` is not nullable, though OpenAI itself streams null until the last chunk.
# So that one chunk is left out; everything else must pass the client's types with validation on.
CLIENT_READABLE = [
    (model, body) for model, body in BUILT if model not in (output.ErrorResponse, output.CompletionChunk)
] + [
    (output.CompletionChunk, output.completion_chunk(ID, CREATED, MODEL, finish_reason="stop")),
    (
        output.CompletionChunk,
        output.usage_chunk(ID, CREATED, MODEL, prompt_tokens=1, completion_tokens=1, object="text_completion"),
    ),
]


@pytest.mark.parametrize(
    "response_model, body",
    CLIENT_READABLE,
    ids=[f"{m.__name__}-{i}" for i, (m, _) in enumerate(CLIENT_READABLE)],
)
def test_the_official_openai_client_reads_what_the_builders_send(response_model, body):
    types = _official_client_types()
    client_type = {
        output.ChatCompletion: types.chat.ChatCompletion,
        output.ChatCompletionChunk: types.chat.ChatCompletionChunk,
        output.Completion: types.Completion,
        output.CompletionChunk: types.Completion,
    }[response_model]

    parsed = client_type.model_validate(body)

    assert parsed.id == body["id"] and parsed.object == body["object"]
    assert len(parsed.choices) == len(body["choices"])
