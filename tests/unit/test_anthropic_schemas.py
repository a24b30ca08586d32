"""Anthropic Messages requests translated into OpenAI chat requests (and from there the engine's), the response
and stream event builders read against the official `anthropic` client's own types, and the error shape."""

from __future__ import annotations

import json

import anthropic.types as at
import pytest
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter, ValidationError

from api.schemas import anthropic as am
from api.schemas.anthropic import CountTokensRequest, MessagesRequest
from api.schemas.openai import ChatCompletionRequest

HELLO = [{"role": "user", "content": "Hello"}]
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
STREAM_EVENT = TypeAdapter(at.RawMessageStreamEvent)


def request(**fields) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "tiny", "max_tokens": 16, "messages": HELLO, **fields})


def refusal(body: dict, request_class=MessagesRequest) -> dict:
    """The first validation error: where (the parameter the API's 400 names) and what."""
    with pytest.raises(ValidationError) as caught:
        request_class.model_validate(body)
    first = caught.value.errors()[0]
    return {"param": ".".join(str(part) for part in first["loc"]), "message": first["msg"], "type": first["type"]}


def body(**fields) -> dict:
    return {"model": "tiny", "max_tokens": 16, "messages": HELLO, **fields}


# --- requests that translate ------------------------------------------------------------------------------


def test_a_plain_request_becomes_a_chat_request_with_its_sampling_and_limits():
    chat = request(system="Be brief.", stop_sequences=["\n\n", "User:"], temperature=0.5, top_p=0.9, top_k=40,
                   metadata={"user_id": "u-1"}, stream=True).to_chat_request()
    assert isinstance(chat, ChatCompletionRequest)
    assert [m.model_dump(exclude_none=True) for m in chat.messages] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    engine = chat.to_generation_request()
    assert engine.max_tokens == 16 and engine.stop == ("\n\n", "User:") and chat.stream is True
    assert (engine.sampling.temperature, engine.sampling.top_p, engine.sampling.top_k) == (0.5, 0.9, 40)


def test_system_text_blocks_are_joined_and_unknown_fields_ignored():
    chat = request(system=[{"type": "text", "text": "One.", "cache_control": {"type": "ephemeral"}},
                           {"type": "text", "text": "Two."}], service_tier="auto").to_chat_request()
    assert chat.messages[0].content == "One.\nTwo."


def test_thinking_is_accepted_and_ignored():
    chat = request(thinking={"type": "enabled", "budget_tokens": 1024}).to_chat_request()
    assert chat.to_generation_request().max_tokens == 16


def test_tool_use_and_tool_result_blocks_become_tool_calls_and_tool_messages():
    chat = request(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm", "signature": "x"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "4 C"}]},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no such city", "is_error": True},
            {"type": "text", "text": "And tomorrow?"}]},
    ]).to_chat_request()
    messages = [m.model_dump(exclude_none=True) for m in chat.messages]
    assert messages[1] == {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}
    assert messages[2:] == [{"role": "tool", "content": "4 C", "tool_call_id": "toolu_1"},
                            {"role": "tool", "content": "Error: no such city", "tool_call_id": "toolu_2"},
                            {"role": "user", "content": "And tomorrow?"}]
    assert chat.tools == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": "The weather in a city"}}]


def test_an_assistant_turn_of_tool_calls_alone_has_no_content():
    chat = request(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]}]).to_chat_request()
    assert chat.messages[1].content is None and chat.messages[2].role == "tool" and chat.messages[2].content == ""


def test_consecutive_turns_of_one_role_are_merged():
    chat = request(messages=[{"role": "user", "content": "One."}, {"role": "user", "content": [
        {"type": "text", "text": "Two."}]}]).to_chat_request()
    assert [(m.role, m.content) for m in chat.messages] == [("user", "One.\nTwo.")]


@pytest.mark.parametrize(("choice", "openai_choice", "parallel"), [
    ({"type": "auto"}, "auto", None),
    ({"type": "any"}, "required", None),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}, None),
    ({"type": "none"}, "none", None),
    ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ({"type": "auto", "disable_parallel_tool_use": False}, "auto", True),
])
def test_tool_choice_maps_to_openai(choice, openai_choice, parallel):
    chat = request(tools=[WEATHER], tool_choice=choice).to_chat_request()
    assert (chat.tool_choice, chat.parallel_tool_calls) == (openai_choice, parallel)


def test_a_forced_tool_is_a_grammar_of_one_call():
    engine = request(tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}).to_chat_request() \
        .to_generation_request()
    assert engine.structure["type"] == "tool_calls" and engine.structure["parallel"] is False


def test_counting_asks_the_worker_for_the_prompt_alone():
    counting = CountTokensRequest.model_validate({"model": "tiny", "messages": HELLO, "system": "Be brief.",
                                                  "tools": [WEATHER], "tool_choice": {"type": "any"}})
    engine = counting.to_counting_request().to_generation_request()
    assert engine.max_tokens == 0 and engine.structure is None  # the same prompt, nothing to constrain
    answering = request(system="Be brief.", tools=[WEATHER]).to_chat_request().to_generation_request()
    assert engine.messages == answering.messages
    assert getattr(engine, "tools", None) == getattr(answering, "tools", None)


def test_max_tokens_0_only_reads_the_prompt():
    engine = request(max_tokens=0, stream=True).to_chat_request().to_generation_request()
    assert engine.max_tokens == 0 and engine.messages == request().to_chat_request().to_generation_request().messages


# --- requests that are refused, naming the parameter -----------------------------------------------------


@pytest.mark.parametrize(("fields", "param", "says"), [
    ({"max_tokens": None}, "max_tokens", "Field required"),
    ({"max_tokens": -1}, "max_tokens", "greater than or equal to 0"),
    ({"messages": []}, "messages", "at least 1"),
    ({"temperature": 1.5}, "temperature", "less than or equal to 1"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences", "at most 4"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role", "'user' or 'assistant'"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "messages.0.content",
     "image blocks are not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages.0.content",
     "document blocks are not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "image", "source": {}}]}]}]}, "messages.0.content.0.tool_result.content", "image blocks"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
     "messages.0.content", "a user message cannot hold a 'tool_use' block"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is"}]},
     "messages", "prefill"),
    ({"system": [{"type": "image", "source": {}}]}, "system", "image blocks"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type",
     "Anthropic's own tools"),
    ({"tools": [{"name": "has space", "input_schema": {}}]}, "tools.0.name", "match pattern"),
    ({"tool_choice": {"type": "any"}}, "tool_choice", "needs tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "other"}}, "tool_choice", "not among the tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool"}}, "tool_choice.name", "needs the tool's name"),
])
def test_it_refuses_by_name(fields, param, says):
    error = refusal({k: v for k, v in body(**fields).items() if v is not None})
    assert error["param"] == param and says in error["message"], error


def test_count_tokens_needs_no_max_tokens_but_a_model_and_messages():
    assert CountTokensRequest.model_validate({"model": "tiny", "messages": HELLO})
    assert refusal({"model": "tiny"}, CountTokensRequest)["param"] == "messages"


# --- responses and stream events, read with the anthropic client's own types ----------------------------------


def test_a_message_validates_as_the_clients_message():
    calls = [{"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    content = [am.text_block("Let me see."), *map(am.tool_use_block, calls)]
    payload = am.message("msg_1", "tiny", content, "tool_use", am.usage(30, 7, cached_tokens=10))
    message = at.Message.model_validate(payload, strict=True)
    assert message.content[1].id == "toolu_abc" and message.content[1].input == {"city": "Oslo"}
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (20, 10, 7)


def test_every_stream_event_validates_as_the_clients_event_union():
    usage = am.usage(12, 0)
    events = [am.message_start("msg_1", "tiny", usage), am.content_block_start(0, am.text_block("")),
              am.text_delta(0, "Hi"), am.content_block_stop(0),
              *am.block_events(1, am.tool_use_block({"id": "call_x", "function": {"name": "f", "arguments": "{}"}})),
              am.message_delta("end_turn", am.usage(12, 3)), am.MESSAGE_STOP]
    for event in events:
        STREAM_EVENT.validate_python(event, strict=True)
    assert json.loads(events[5]["delta"]["partial_json"]) == {}


@pytest.mark.parametrize(("engine", "anthropic"), [("stop", "end_turn"), ("length", "max_tokens"),
                                                   ("cancelled", "end_turn"), (None, "end_turn")])
def test_engine_finish_reasons_map_to_stop_reasons(engine, anthropic):
    assert am.stop_reason(engine) == anthropic


def test_a_stop_string_that_ended_the_text_is_the_stop_sequence():
    assert am.stop_reason("stop", "User:") == "stop_sequence"
    assert am.message("msg_1", "m", [], "stop_sequence", am.usage(3, 2), "User:")["stop_sequence"] == "User:"
    assert am.message_delta("end_turn", am.usage(3, 2), None)["delta"]["stop_sequence"] is None


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request_error"), (401, "authentication_error"),
                                              (403, "permission_error"), (404, "not_found_error"),
                                              (429, "rate_limit_error"), (500, "api_error"),
                                              (503, "overloaded_error"), (502, "api_error")])
def test_errors_take_anthropics_shape(status, kind):
    payload = am.error_body(status, {"message": "Nope.", "type": "x", "param": None, "code": "y"})
    assert payload == {"type": "error", "error": {"type": kind, "message": "Nope."}}
    ErrorResponse.model_validate(payload, strict=True)


def test_a_too_large_request_is_request_too_large_as_anthropic_says():
    assert am.error_body(413, {"message": "Too big."})["error"]["type"] == "request_too_large"


def test_an_authentication_error_tells_how_anthropic_clients_send_the_key():
    payload = am.error_body(401, {"message": "Send 'Authorization: Bearer <key>'", "code": "invalid_api_key"})
    assert "x-api-key" in payload["error"]["message"]


def test_a_stream_error_hides_server_paths():
    payload = am.stream_error({"kind": "error", "status": 503, "message": "cannot load /srv/models/secret/m.gguf"})
    assert payload["error"] == {"type": "overloaded_error", "message": "cannot load …/m.gguf"}


def test_an_error_in_a_stream_is_an_error_event_in_anthropics_shape():
    from api.streaming import typed_sse

    framing = typed_sse(am.stream_error)
    frame = framing.frame("7", framing.error({"kind": "error", "status": 500, "message": "The backend failed."}))
    name, data = frame.splitlines()[0], frame.splitlines()[2]
    assert name == "event: error"
    assert json.loads(data.removeprefix("data: ")) == {"type": "error", "error": {"type": "api_error",
                                                                                  "message": "The backend failed."}}
