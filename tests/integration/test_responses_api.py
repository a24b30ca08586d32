"""OpenAI's Responses API (/v1/responses) on a real embedded server, driven by the official openai client; every
response and stream event is validated with the client's own pydantic types (`Response`, the
`ResponseStreamEvent` union). The spec's Response schemas are not in tests/data/openai_response_schemas.json (the
openai package ships no OpenAPI file), so the client's types, generated from that spec, stand in for them."""

from __future__ import annotations

import json
import secrets

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import openai_client

GREEDY = {"temperature": 0, "seed": 7}
EVENTS = TypeAdapter(ResponseStreamEvent)
# a format whose grammar ends the answer within a few tokens: status "completed"
YES_NO = {"format": {"type": "json_schema", "name": "yes_no", "strict": True, "schema": {
    "type": "object", "properties": {"yes": {"type": "boolean"}}, "required": ["yes"], "additionalProperties": False}}}
# The tools' description alone fills most of the tiny model's 512-token context: tool calls run on the demo model.
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6}},
                          "required": ["city"], "additionalProperties": False}}


def create(client, **overrides) -> Response:
    arguments = {"model": "tiny", "input": "Hello there", "max_output_tokens": 8, **GREEDY}
    arguments.update(overrides)
    extra = {key: arguments.pop(key) for key in ("seed",) if key in arguments}
    return client.responses.create(**arguments, extra_body=extra)


def demo_client(server):
    return openai_client(server).with_options(timeout=300)


def post(server, body: dict, key: str | None = None) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key or server.api_key}"})


def raw_events(server, body: dict) -> list[tuple[str, dict]]:
    """(SSE event name, payload) of a streamed response, read off the wire."""
    with httpx.stream("POST", f"{server.base_url}/v1/responses", json={**body, "stream": True}, timeout=120,
                      headers={"Authorization": f"Bearer {server.api_key}"}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-hearth-job"]
        events, name = [], None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def conforms(payload: dict) -> Response:
    """The payload validates as the openai client's `Response` (and carries no `output_text`: the client's)."""
    assert "output_text" not in payload
    return Response.model_validate(payload)


# --- answers -------------------------------------------------------------------------------------------------


def test_it_answers_a_string_input_with_a_response_object(embedded_server):
    response = create(openai_client(embedded_server))
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.model == "tiny"
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert response.output_text == message.content[0].text
    assert response.usage.output_tokens == 8 and response.usage.input_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + 8
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.store is True and response.parallel_tool_calls is True and response.tools == []


def test_its_answers_conform_to_the_client_types_and_echo_the_request(embedded_server):
    body = {"model": "tiny", "input": "Hi", "max_output_tokens": 4, "temperature": 0.5, "top_p": 0.9,
            "instructions": "Be brief.", "metadata": {"team": "blue"}, "user": "u-1", "store": False,
            "text": {"format": {"type": "text"}}}
    raw = post(embedded_server, body)
    assert raw.status_code == 200 and raw.headers["x-hearth-backend"]
    response = conforms(raw.json())
    assert (response.temperature, response.top_p, response.instructions, response.user) == (0.5, 0.9, "Be brief.",
                                                                                           "u-1")
    assert response.metadata == {"team": "blue"} and response.store is False
    assert response.max_output_tokens == 4 and response.text.format.type == "text"
    assert response.tool_choice == "auto" and response.previous_response_id is None


def test_it_answers_a_list_of_items_with_instructions(embedded_server):
    client = openai_client(embedded_server)
    items = [{"role": "developer", "content": "Answer in one word."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi"}]},
             {"role": "user", "content": "And now?"}]
    with_items = create(client, input=items, instructions="You are terse.")
    assert with_items.instructions == "You are terse."
    plain = create(client, input="And now?")
    assert with_items.usage.input_tokens > plain.usage.input_tokens  # the instructions and items were read


# --- streams ------------------------------------------------------------------------------------------------


def test_it_streams_the_text_it_answers_whole(embedded_server):
    client = openai_client(embedded_server)
    whole = create(client, max_output_tokens=12).output_text
    with client.responses.stream(model="tiny", input="Hello there", max_output_tokens=12, temperature=0,
                                 extra_body={"seed": 7}) as stream:
        events = list(stream)
    final = events[-1].response  # response.incomplete: get_final_response() is for response.completed only
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == whole == final.output_text
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    assert events[-1].type == "response.incomplete" and final.status == "incomplete"


def test_its_stream_events_are_in_order_and_conform_to_the_client_types(embedded_server):
    events = raw_events(embedded_server, {"model": "tiny", "input": "Hello", "max_output_tokens": 5, **GREEDY})
    for name, payload in events:
        assert name == payload["type"]
        EVENTS.validate_python(payload)
    kinds = [payload["type"] for _name, payload in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert set(kinds[4:-4]) <= {"response.output_text.delta"}
    created, last = events[0][1]["response"], events[-1][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and "usage" not in created
    assert last["id"] == created["id"] and last["usage"]["output_tokens"] == 5
    conforms(last)
    text = "".join(payload["delta"] for _name, payload in events if payload["type"] == "response.output_text.delta")
    assert last["output"][0]["content"][0]["text"] == text


# --- tools and structured output ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_forced_function_call_is_exactly_one_function_call_item(embedded_server):
    response = create(demo_client(embedded_server), model="demo", tools=[WEATHER], max_output_tokens=60,
                      tool_choice={"type": "function", "name": "get_weather"})
    assert [item.type for item in response.output] == ["function_call"]
    call = response.output[0]
    assert call.name == "get_weather" and call.status == "completed"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert set(json.loads(call.arguments)) == {"city"}
    assert response.tools[0].name == "get_weather" and response.tool_choice.name == "get_weather"


@pytest.mark.slow
def test_a_forced_function_call_streams_its_arguments(embedded_server):
    client = demo_client(embedded_server)
    with client.responses.stream(model="demo", input="Weather in Oslo?", tools=[WEATHER], tool_choice="required",
                                 max_output_tokens=60, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    [call] = [item for item in final.output if item.type == "function_call"]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert deltas == done.arguments == call.arguments
    assert set(json.loads(call.arguments)) == {"city"}


@pytest.mark.slow
def test_a_function_call_output_continues_the_conversation(embedded_server):
    client = demo_client(embedded_server)
    first = create(client, model="demo", input="Weather in Oslo?", tools=[WEATHER], tool_choice="required",
                   max_output_tokens=60)
    [call] = first.output
    answer = create(client, model="demo", previous_response_id=first.id, tools=[WEATHER],
                    input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Rain, 7 C"}])
    assert answer.previous_response_id == first.id
    assert answer.usage.input_tokens > first.usage.input_tokens
    assert answer.output  # a message (or another call): the tiny model decides


def test_a_json_schema_text_format_gives_valid_json(embedded_server):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    response = create(openai_client(embedded_server), max_output_tokens=80,
                      text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}})
    assert response.status == "completed"
    value = json.loads(response.output_text)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    assert response.text.format.type == "json_schema" and response.text.format.name == "person"


def test_a_json_object_text_format_gives_a_json_object(embedded_server):
    response = create(openai_client(embedded_server), max_output_tokens=60, text={"format": {"type": "json_object"}})
    if response.status == "completed":
        assert isinstance(json.loads(response.output_text), dict)


# --- stored responses ---------------------------------------------------------------------------------------


def test_previous_response_id_continues_a_stored_response(embedded_server):
    client = openai_client(embedded_server)
    first = create(client, input="My name is Ada.")
    second = create(client, input="What is my name?", previous_response_id=first.id)
    alone = create(client, input="What is my name?")
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > alone.usage.input_tokens  # the earlier turn was read again
    items = client.responses.input_items.list(second.id, order="asc")
    texts = [part.text for item in items.data for part in item.content]
    assert texts == ["My name is Ada.", first.output_text, "What is my name?"]


def test_a_streamed_response_is_stored_before_its_last_event(embedded_server):
    client = openai_client(embedded_server)
    with client.responses.stream(model="tiny", input="Hi", max_output_tokens=40, temperature=0, text=YES_NO) as stream:
        final = stream.get_final_response()
        stored = client.responses.retrieve(final.id)  # at once: no wait
    assert final.status == "completed" and json.loads(final.output_text) in ({"yes": True}, {"yes": False})
    assert (stored.id, stored.status, stored.output_text, stored.usage) == (final.id, final.status,
                                                                           final.output_text, final.usage)


def test_it_retrieves_and_deletes_a_stored_response(embedded_server):
    client = openai_client(embedded_server)
    created = create(client)
    raw = httpx.get(f"{embedded_server.base_url}/v1/responses/{created.id}", timeout=30,
                    headers={"Authorization": f"Bearer {embedded_server.api_key}"})
    assert raw.status_code == 200 and conforms(raw.json()).id == created.id
    assert client.responses.retrieve(created.id).output_text == created.output_text
    deleted = httpx.delete(f"{embedded_server.base_url}/v1/responses/{created.id}", timeout=30,
                           headers={"Authorization": f"Bearer {embedded_server.api_key}"})
    assert deleted.json() == {"id": created.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_store_false_keeps_nothing(embedded_server):
    client = openai_client(embedded_server)
    response = create(client, store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as caught:
        create(client, previous_response_id=response.id)
    assert caught.value.body["code"] == "previous_response_not_found"


def test_input_items_page_through_newest_first(embedded_server):
    client = openai_client(embedded_server)
    items = [{"role": "user", "content": f"line {i}"} for i in range(5)]
    response = create(client, input=items)
    page = client.responses.input_items.list(response.id, limit=2)
    ResponseItemList.model_validate(page.model_dump())
    assert [item.content[0].text for item in page.data] == ["line 4", "line 3"] and page.has_more
    everything = [item.content[0].text for item in client.responses.input_items.list(response.id, limit=2)]
    assert everything == [f"line {i}" for i in reversed(range(5))]  # the client follows `after` page by page


def test_another_users_response_is_not_found(embedded_server):
    owner = openai_client(embedded_server)
    outsider = openai_client(embedded_server, embedded_server.create_user(f"outsider-{secrets.token_hex(3)}"))
    response = create(owner)
    for attempt in (lambda: outsider.responses.retrieve(response.id),
                    lambda: outsider.responses.delete(response.id),
                    lambda: outsider.responses.input_items.list(response.id),
                    lambda: create(outsider, previous_response_id=response.id)):
        with pytest.raises(openai.NotFoundError) as caught:
            attempt()
        assert caught.value.status_code == 404 and caught.value.body["type"] == "not_found_error"
    assert owner.responses.retrieve(response.id).id == response.id  # still there for its owner


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({"input": "hi"}, 400, "model", "missing_required_parameter"),
    ({"model": "tiny"}, 400, "input", "missing_required_parameter"),
    ({"model": "nope", "input": "hi"}, 404, "model", "model_not_found"),
    ({"model": "tiny", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]}, 400, "input[0].content[0]",
     "unsupported_parameter"),
    ({"model": "tiny", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
     400, "input[0].content[0]", "unsupported_parameter"),
    ({"model": "tiny", "input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools[0].type",
     "unsupported_parameter"),
    ({"model": "tiny", "input": "hi", "background": True}, 400, "background", "unsupported_parameter"),
    ({"model": "tiny", "input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens", "invalid_value"),
    ({"model": "tiny", "input": "hi", "temperature": 5}, 400, "temperature", "invalid_value"),
    ({"model": "tiny", "input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, 400,
     "text.format.name", "missing_required_parameter"),
    ({"model": "tiny", "input": "hi", "previous_response_id": "resp_nope"}, 404, "previous_response_id",
     "previous_response_not_found"),
    ({"model": "tiny", "input": "x " * 3000}, 400, None, "context_length_exceeded"),
])
def test_it_refuses_bad_requests_in_openais_envelope(embedded_server, body, status, param, code):
    response = post(embedded_server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["param"], error["code"]) == (param, code)


def test_it_refuses_a_missing_or_wrong_key_with_401(embedded_server):
    client = openai_client(embedded_server, api_key="hth_nope_nope")
    with pytest.raises(openai.AuthenticationError) as caught:
        create(client)
    assert caught.value.body["code"] == "invalid_api_key"
    bare = httpx.get(f"{embedded_server.base_url}/v1/responses/resp_x", timeout=30)
    assert bare.status_code == 401 and bare.json()["error"]["type"] == "authentication_error"


def test_an_unknown_response_is_404_in_openais_envelope(embedded_server):
    headers = {"Authorization": f"Bearer {embedded_server.api_key}"}
    for method, path in (("GET", "/v1/responses/resp_unknown"), ("DELETE", "/v1/responses/resp_unknown"),
                         ("GET", "/v1/responses/resp_unknown/input_items")):
        response = httpx.request(method, f"{embedded_server.base_url}{path}", headers=headers, timeout=30)
        assert response.status_code == 404
        assert response.json()["error"]["param"] == "response_id"


@pytest.mark.parametrize("body", [
    b"{", b"[]", b"null", b'"hi"', b'{"model": 1, "input": "x"}', b'{"model": "tiny", "input": 3}',
    b'{"model": "tiny", "input": [1, 2]}', b'{"model": "tiny", "input": [[]]}',
    b'{"model": "tiny", "input": [{"type": "message"}]}',
    b'{"model": "tiny", "input": [{"role": "user", "content": 5}]}',
    b'{"model": "tiny", "input": [{"role": "user", "content": [5]}]}',
    b'{"model": "tiny", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}',
    b'{"model": "tiny", "input": [{"type": "function_call", "call_id": 1, "name": "f", "arguments": {}}]}',
    b'{"model": "tiny", "input": [{"type": "function_call_output", "call_id": "c", "output": {}}]}',
    b'{"model": "tiny", "input": "x", "tools": [1]}', b'{"model": "tiny", "input": "x", "tools": {}}',
    b'{"model": "tiny", "input": "x", "tools": [{"type": "function", "name": 5}]}',
    b'{"model": "tiny", "input": "x", "tool_choice": {"type": "function"}}',
    b'{"model": "tiny", "input": "x", "tool_choice": 7}', b'{"model": "tiny", "input": "x", "text": 1}',
    b'{"model": "tiny", "input": "x", "text": {"format": "json"}}',
    b'{"model": "tiny", "input": "x", "text": {"format": {"type": "json_schema", "name": "n", "schema": 1}}}',
    b'{"model": "tiny", "input": "x", "text": {"format": {"type": "json_schema", "name": "n", '
    b'"schema": {"type": "nonsense"}}}}',
    b'{"model": "tiny", "input": "x", "metadata": {"a": 1}}', b'{"model": "tiny", "input": "x", "store": "maybe"}',
    b'{"model": "tiny", "input": "x", "previous_response_id": 5}',
    b'{"model": "tiny", "input": "x", "max_output_tokens": 1e400}',
    b'{"model": "tiny", "input": "\\u0000"}', b'{"model": "tiny", "input": "\\ud800"}',
])
def test_it_never_answers_malformed_bodies_with_a_server_error(embedded_server, body):
    response = httpx.post(f"{embedded_server.base_url}/v1/responses", content=body, timeout=120,
                          headers={"Authorization": f"Bearer {embedded_server.api_key}",
                                   "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["message"]


def fuzz(server, strategy, label: str, failures: list[str]) -> None:
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    @settings(max_examples=10, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case):
        if isinstance(case.body, dict) and case.body.get("max_output_tokens") is None:
            case.body["max_output_tokens"] = 4  # generated requests need not write for minutes
        response = case.call(base_url=server.base_url, timeout=120)
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except AssertionError as error:
            failures.append(f"{label} {response.status_code}: {error}"[:1500])

    check()


def test_it_survives_generated_requests(embedded_server):
    """Schemathesis against the documented operations of /v1/responses: no 5xx, valid or not."""
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    key = embedded_server.create_user(f"fuzz-{secrets.token_hex(3)}")
    schema = schemathesis.openapi.from_url(f"{embedded_server.base_url}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.path.startswith("/v1/responses")]
    assert len(operations) == 4
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode, headers={"Authorization": f"Bearer {key}"})
            try:
                fuzz(embedded_server, strategy, f"{operation.label} [{mode.value}]", failures)
            except Unsatisfiable:  # nothing to make invalid (a path parameter that takes any text)
                assert mode is GenerationMode.NEGATIVE
    assert not failures, "\n\n".join(failures[:10])
