"""The Responses API request as Hearth reads it: its translation into a chat completion request, the refusals
that name their parameter, and the response objects and items validated with the openai client's own types."""

from __future__ import annotations

import json

import pytest
from openai.types.responses import (
    Response,
    ResponseFunctionToolCallItem,
    ResponseInputMessageItem,
    ResponseItemList,
    ResponseStreamEvent,
)
from pydantic import TypeAdapter, ValidationError

from api.schemas import responses as rs
from api.schemas.openai_output import validation_error_to_openai
from api.streaming import Answer

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def request(**fields) -> rs.ResponseRequest:
    return rs.ResponseRequest.model_validate({"model": "tiny", "input": "Hello", **fields})


def translated(**fields):
    body = request(**fields)
    return rs.chat_request(body, rs.input_items(body.input))


def refusal(**fields) -> rs.InvalidInput:
    with pytest.raises(rs.InvalidInput) as caught:
        translated(**fields)
    return caught.value


def validation_refusal(**fields) -> dict:
    with pytest.raises(ValidationError) as caught:
        request(**fields)
    return validation_error_to_openai(caught.value)["error"]


# --- the translation ----------------------------------------------------------------------------------------


def test_a_string_input_is_one_user_message():
    chat = translated()
    assert [m.to_engine_message() for m in chat.messages] == [{"role": "user", "content": "Hello"}]


def test_instructions_come_first_as_the_system_message():
    chat = translated(instructions="Be brief.")
    assert [(m.role, m.content) for m in chat.messages] == [("system", "Be brief."), ("user", "Hello")]


def test_message_items_keep_their_roles_and_join_their_text_parts():
    chat = translated(input=[
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                         {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "c", "annotations": []}]},
        {"role": "user", "content": "d"},
    ])
    assert [(m.role, m.content) for m in chat.messages] == [
        ("developer", "Rules."), ("user", "a\nb"), ("assistant", "c"), ("user", "d")]
    assert chat.messages[0].to_engine_message()["role"] == "system"


def test_function_calls_and_outputs_become_tool_calls_and_tool_messages():
    chat = translated(tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city": "Bergen"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "sun"}]},
    ])
    assistant = chat.messages[1]
    assert assistant.role == "assistant" and assistant.content is None
    assert [call["id"] for call in assistant.tool_calls] == ["call_1", "call_2"]
    assert assistant.tool_calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert [(m.role, m.tool_call_id, m.content) for m in chat.messages[2:]] == [
        ("tool", "call_1", "rain"), ("tool", "call_2", "sun")]


def test_function_tools_become_chat_tools_and_a_named_choice_a_chat_choice():
    chat = translated(tools=[{**WEATHER, "strict": True}], tool_choice={"type": "function", "name": "get_weather"})
    assert chat.tools == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city", "parameters": WEATHER["parameters"],
        "strict": True}}]
    assert chat.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert chat.structure()["type"] == "tool_calls"
    assert chat.structure()["parallel"] is False  # one call unless parallel_tool_calls is sent as true


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_strings_pass_through(choice):
    assert translated(tools=[WEATHER], tool_choice=choice).tool_choice == choice


def test_text_formats_become_response_formats():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    chat = translated(text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}})
    assert chat.response_format.model_dump() == {
        "type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}
    assert translated(text={"format": {"type": "json_object"}}).response_format.type == "json_object"
    assert translated(text={"format": {"type": "text"}}).response_format is None


def test_sampling_and_budget_carry_over():
    chat = translated(max_output_tokens=7, temperature=0, top_p=0.5, seed=3, user="u1")
    engine = chat.to_generation_request()
    assert engine.max_tokens == 7
    assert (engine.sampling.temperature, engine.sampling.top_p, engine.sampling.seed) == (0, 0.5, 3)
    assert chat.stream is False and translated(stream=True).stream is True


def test_a_continued_conversation_reads_the_stored_items_then_the_new_input():
    earlier = rs.input_items("Hi")
    output = rs.output_items("resp_1", "Hello!", "stop", None)
    items = [*rs.continued_items(earlier, output), *rs.input_items("And then?")]
    chat = rs.chat_request(request(input="And then?"), items)
    assert [(m.role, m.content) for m in chat.messages] == [
        ("user", "Hi"), ("assistant", "Hello!"), ("user", "And then?")]


# --- refusals that name the parameter -----------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "param", "code"), [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     "input[0].content[0]", "unsupported_parameter"),
    ({"input": [{"role": "user", "content": "a"}, {"role": "user", "content": [
        {"type": "input_text", "text": "b"}, {"type": "input_file", "file_id": "f"}]}]},
     "input[1].content[1]", "unsupported_parameter"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type", "unsupported_parameter"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]", "unsupported_parameter"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "invalid_value"),
    ({"input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter"),
    ({"input": [{"content": "x"}]}, "input[0].type", "missing_required_parameter"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id",
     "missing_required_parameter"),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output",
     "missing_required_parameter"),
    ({"input": []}, "input", "invalid_value"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_parameter"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type", "unsupported_parameter"),
    ({"tools": [{"type": "function"}]}, "tools[0].name", "missing_required_parameter"),
    ({"tools": [{**WEATHER, "parameters": "no"}]}, "tools[0].parameters", "invalid_type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice.name",
     "invalid_value"),
    ({"tools": [WEATHER], "tool_choice": {"type": "file_search"}}, "tool_choice.type", "unsupported_parameter"),
    ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
    ({"text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}, "text.format.name",
     "missing_required_parameter"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema",
     "missing_required_parameter"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type", "invalid_value"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"$ref": "http://e/s.json"}}}},
     "text.format", "invalid_value"),
])
def test_it_refuses_what_it_cannot_read_naming_the_parameter(fields, param, code):
    refused = refusal(**fields)
    assert (refused.param, refused.code, refused.status) == (param, code, 400)
    assert param.split(".")[0].split("[")[0] in refused.message


@pytest.mark.parametrize(("fields", "param"), [
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"truncation": "auto"}, "truncation"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
])
def test_it_refuses_what_it_cannot_do_as_unsupported(fields, param):
    error = validation_refusal(**fields)
    assert (error["param"], error["code"]) == (param, "unsupported_parameter")


@pytest.mark.parametrize(("fields", "param"), [
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
    ({"input": 5}, "input"),
])
def test_it_refuses_values_out_of_range(fields, param):
    assert validation_refusal(**fields)["param"].startswith(param)


def test_it_accepts_and_ignores_what_has_no_effect_here():
    body = request(reasoning={"effort": "high"}, include=["reasoning.encrypted_content"], service_tier="auto",
                   prompt_cache_key="k", safety_identifier="s", text={"format": {"type": "text"}, "verbosity": "low"},
                   truncation="disabled", background=False, store=False, max_tool_calls=3)
    assert rs.chat_request(body, rs.input_items(body.input)).messages[0].content == "Hello"


# --- the response object and its items ----------------------------------------------------------------------


def whole(body: rs.ResponseRequest, *, status="completed", output=None) -> dict:
    return rs.response_object("resp_abc", 1700000000, rs.echo(body), status=status, output=output or [],
                              usage=rs.usage(10, 5, 4), completed_at=1700000001)


def test_the_response_object_validates_with_the_openai_client_types():
    body = request(instructions="Be brief.", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
                   text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
                   metadata={"a": "b"}, temperature=0.5, max_output_tokens=20, previous_response_id="resp_0",
                   store=False, user="u")
    output = rs.output_items("resp_abc", '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                             '</tool_call>', "stop", translated(tools=[WEATHER]).tools)
    payload = whole(body, output=output)
    response = Response.model_validate(payload)
    assert response.status == "completed" and response.store is False and response.metadata == {"a": "b"}
    assert response.tools[0].name == "get_weather" and response.tool_choice.name == "get_weather"
    assert response.text.format.type == "json_schema"
    assert response.usage.input_tokens_details.cached_tokens == 4 and response.usage.total_tokens == 15
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert "output_text" not in payload  # the client libraries compute it from the output


def test_a_forced_call_is_one_function_call_item_without_a_message():
    tools = translated(tools=[WEATHER]).tools
    output = rs.output_items("resp_abc", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
                             '</tool_call>', "stop", tools)
    assert [item["type"] for item in output] == ["function_call"]
    call = ResponseFunctionToolCallItem.model_validate(output[0])
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    assert call.call_id.startswith("call_") and call.id.startswith("fc_") and call.status == "completed"
    again = rs.output_items("resp_abc", '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                            '</tool_call>', "stop", tools)
    assert again[0]["id"] == call.id and again[0]["call_id"] == call.call_id  # the stream and the store agree


def test_text_is_one_message_and_a_budget_cut_makes_it_incomplete():
    body = request()
    [message] = rs.output_items("resp_abc", "Hi there", "length", None)
    response = Response.model_validate(whole(body, status=rs.status_of("length"), output=[message]))
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete" and response.output_text == "Hi there"
    assert response.output[0].content[0].annotations == []
    assert rs.status_of("stop") == "completed" and rs.status_of("cancelled") == "cancelled"


def test_stored_input_items_list_with_the_openai_client_types():
    body = request(input=[{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                          {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                          {"type": "function_call_output", "call_id": "c", "output": "r"}])
    items = [*rs.continued_items([], rs.output_items("resp_0", "A", "stop", None)), *rs.input_items(body.input)]
    page = ResponseItemList.model_validate(rs.item_list(items, has_more=False))
    assert [item.type for item in page.data] == ["message", "message", "message", "function_call",
                                                 "function_call_output"]
    assert isinstance(page.data[1], ResponseInputMessageItem) and page.data[1].role == "system"
    assert page.first_id == items[0]["id"] and all(item.id for item in page.data)


# --- the stream, event by event -----------------------------------------------------------------------------


EVENTS = TypeAdapter(ResponseStreamEvent)
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def turn(**fields):
    from api.routers.responses import _Turn

    body = request(**fields)
    chat = rs.chat_request(body, rs.input_items(body.input))
    shape = {"created": 1700000000, "settings": rs.echo(body), "tools": chat.tools if chat.uses_tools() else None,
             "max_calls": rs.max_calls(body)}
    return _Turn(None, "resp_abc", shape, rs.input_items(body.input))


def streamed(pieces: list[str], finish_reason: str = "stop", **fields) -> tuple[list[dict], dict]:
    """Every event payload of a job that writes `pieces`, each validated as the client's stream event type; and
    the whole answer of the same job, answered at once."""
    events = [{"kind": "started", "prompt_tokens": 9, "backend": "llamacpp"},
              *({"kind": "token", "text": piece, "ids": [1]} for piece in pieces),
              {"kind": "done", "finish_reason": finish_reason, "prompt_tokens": 9, "completion_tokens": len(pieces)}]
    live = turn(**fields)
    payloads = [payload for event in events for payload in live.apply(event)]
    for payload in payloads:
        EVENTS.validate_python(payload)
    answer = Answer()
    for event in events:
        answer.apply(event)
    return payloads, turn(**fields).whole(answer)


def test_a_text_stream_is_numbered_conforms_and_adds_up_to_the_whole_answer():
    payloads, whole = streamed(["Hel", "lo", "", " there"], finish_reason="length")
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert [p["type"] for p in payloads] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.incomplete"]
    assert payloads[0]["response"]["output"] == [] and payloads[0]["response"]["status"] == "in_progress"
    assert payloads[2]["item"]["content"] == [] and payloads[2]["item"]["status"] == "in_progress"
    assert payloads[-1]["response"] == whole and Response.model_validate(whole).output_text == "Hello there"
    assert whole["status"] == "incomplete" and whole["output"][0]["status"] == "incomplete"


def test_a_call_streams_its_arguments_and_adds_up_to_the_whole_answer():
    pieces = [CALL_TEXT[i:i + 7] for i in range(0, len(CALL_TEXT), 7)]
    payloads, whole = streamed(pieces, tools=[WEATHER], tool_choice="required")
    kinds = [p["type"] for p in payloads]
    assert "response.output_text.delta" not in kinds and kinds[-1] == "response.completed"
    arguments = "".join(p["delta"] for p in payloads if p["type"] == "response.function_call_arguments.delta")
    [done] = [p for p in payloads if p["type"] == "response.function_call_arguments.done"]
    assert arguments == done["arguments"] and json.loads(arguments) == {"city": "Oslo"}
    assert payloads[-1]["response"] == whole
    assert [item["type"] for item in whole["output"]] == ["function_call"]
    assert whole["output"][0]["status"] == "completed"


def test_text_beside_a_call_is_a_message_before_it():
    payloads, whole = streamed(["Let me look.", "\n", CALL_TEXT], tools=[WEATHER])
    assert [item["type"] for item in whole["output"]] == ["message", "function_call"]
    assert whole["output"][0]["content"][0]["text"] == "Let me look."
    assert payloads[-1]["response"] == whole


def test_parallel_tool_calls_false_keeps_one_call():
    payloads, whole = streamed([CALL_TEXT, "\n", CALL_TEXT.replace("Oslo", "Bergen")], tools=[WEATHER],
                               parallel_tool_calls=False)
    assert [item["type"] for item in whole["output"]] == ["function_call"]
    assert payloads[-1]["response"] == whole


def test_a_failure_midway_ends_the_stream_with_response_failed():
    live = turn()
    for event in ({"kind": "started", "prompt_tokens": 3}, {"kind": "token", "text": "Hi", "ids": [1]}):
        live.apply(event)
    failed = live.failed({"kind": "error", "status": 503, "message": "The worker went away."})
    EVENTS.validate_python(failed)
    assert failed["type"] == "response.failed" and failed["sequence_number"] == 5
    assert failed["response"]["error"] == {"code": "server_error", "message": "The worker went away."}
    assert failed["response"]["output"][0]["status"] == "incomplete"
