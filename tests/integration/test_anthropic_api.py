"""Anthropic's Messages API on a real embedded server, driven by the official `anthropic` client and by raw HTTP
where the wire format is the point. Responses and stream events are read with the client's own pydantic types."""

from __future__ import annotations

import json
import secrets

import anthropic
import anthropic.types as at
import httpx
import pytest
from anthropic.types.shared import ErrorResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

GREEDY = {"temperature": 0}  # this client's create() has no sampling arguments any more: sent as extra_body
HELLO = [{"role": "user", "content": "Hello there"}]
# Tools are described in the prompt, which then overflows the tiny model's 512 tokens: tool calls run on the demo
# model (as in test_api_structured.py).
WEATHER = {"name": "get_weather", "description": "Weather",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                            "required": ["city"], "additionalProperties": False}}
FORCED = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
STREAM_EVENT = TypeAdapter(at.RawMessageStreamEvent)


def client(server, api_key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=api_key or server.api_key, max_retries=0,
                               timeout=120)


def create(server, **overrides) -> at.Message:
    arguments = {"model": "tiny", "max_tokens": 12, "messages": HELLO, "extra_body": GREEDY, **overrides}
    return client(server).messages.create(**arguments)


def post(server, path: str = "/v1/messages", *, headers: dict | None = None, **kwargs) -> httpx.Response:
    headers = {"x-api-key": server.api_key, "anthropic-version": "2023-06-01", **(headers or {})}
    return httpx.post(f"{server.base_url}{path}", headers=headers, timeout=120, **kwargs)


def body(**fields) -> dict:
    return {"model": "tiny", "max_tokens": 12, "messages": HELLO, **GREEDY, **fields}


def sse(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, payload) of every event of an SSE response."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    """The error's message, after checking Anthropic's shape (read with the client's own ErrorResponse)."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert set(payload) == {"type", "error"} and set(payload["error"]) == {"type", "message"}, payload
    assert payload["error"]["type"] == kind and payload["error"]["message"]
    ErrorResponse.model_validate(payload, strict=True)
    return payload["error"]["message"]


def forced_call(server) -> at.Message:
    response = post(server, json=body(model="demo", tools=[WEATHER], tool_choice=FORCED, max_tokens=100))
    assert response.status_code == 200, response.text
    return at.Message.model_validate(response.json(), strict=True)


# --- answers -----------------------------------------------------------------------------------------------


def test_it_answers_a_message_in_anthropics_shape(embedded_server):
    response = post(embedded_server, json=body())
    assert response.status_code == 200, response.text
    message = at.Message.model_validate(response.json(), strict=True)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "tiny" and [block.type for block in message.content] == ["text"]
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.usage.output_tokens == 12
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens > 0
    assert response.headers["x-hearth-backend"] == "llamacpp" and response.headers["x-hearth-job"]


def test_the_client_creates_a_message(embedded_server):
    message = create(embedded_server)
    assert isinstance(message.content[0], at.TextBlock) and message.content[0].text
    assert message.usage.output_tokens == 12


def test_it_streams_the_same_text_it_answers_whole(embedded_server):
    whole = create(embedded_server).content[0].text
    with client(embedded_server).messages.stream(model="tiny", max_tokens=12, messages=HELLO,
                                                 extra_body=GREEDY) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == whole == final.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 12


def test_every_stream_event_is_one_of_anthropics_in_order(embedded_server):
    with httpx.stream("POST", f"{embedded_server.base_url}/v1/messages", json=body(stream=True), timeout=120,
                      headers={"x-api-key": embedded_server.api_key}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = sse(response)
    names = [name for name, _ in events]
    assert all(name == payload["type"] for name, payload in events)
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    for name, payload in events:
        if name != "ping":
            STREAM_EVENT.validate_python(payload, strict=True)
    start, delta = events[0][1]["message"], events[-2][1]
    assert start["stop_reason"] is None and start["content"] == [] and start["id"].startswith("msg_")
    assert delta["delta"]["stop_reason"] == "max_tokens" and delta["usage"]["output_tokens"] == 12


def test_it_cuts_at_a_stop_sequence(embedded_server):
    text = create(embedded_server, max_tokens=24).content[0].text
    stop = text[8:11]
    assert stop.strip(), f"pick a visible stop string from {text!r}"
    stopped = create(embedded_server, max_tokens=40, stop_sequences=[stop])
    assert stopped.content[0].text == text[: text.index(stop)]
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    with httpx.stream("POST", f"{embedded_server.base_url}/v1/messages", timeout=120,
                      json=body(stream=True, max_tokens=40, stop_sequences=[stop]),
                      headers={"x-api-key": embedded_server.api_key}) as response:
        streamed = sse(response)
    delta = next(payload for name, payload in streamed if name == "message_delta")["delta"]
    assert delta == {"stop_reason": "stop_sequence", "stop_sequence": stop}


def prompt_tokens(message: at.Message) -> int:
    return message.usage.input_tokens + message.usage.cache_read_input_tokens


def test_a_system_prompt_as_text_blocks_reaches_the_model(embedded_server):
    plain = create(embedded_server, system="Be brief.")
    blocks = create(embedded_server, system=[{"type": "text", "text": "Be brief."}])
    assert plain.content[0].text == blocks.content[0].text
    assert prompt_tokens(plain) == prompt_tokens(blocks) > prompt_tokens(create(embedded_server))


def test_a_repeated_prompt_reads_from_the_prefix_cache(embedded_server):
    messages = [{"role": "user", "content": "A longer question, to be asked twice over " + secrets.token_hex(4)}]
    first = create(embedded_server, messages=messages, max_tokens=2)
    second = create(embedded_server, messages=messages, max_tokens=2)
    total = first.usage.input_tokens + first.usage.cache_read_input_tokens
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens == total
    assert second.usage.cache_read_input_tokens > 0 and second.usage.cache_creation_input_tokens == 0


# --- tools ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_forced_tool_gives_one_tool_use_block_with_an_input_object(embedded_server):
    message = forced_call(embedded_server)
    assert message.stop_reason == "tool_use", message
    [call] = message.content
    assert isinstance(call, at.ToolUseBlock) and call.name == "get_weather" and call.id.startswith("toolu_")
    assert isinstance(call.input, dict) and set(call.input) == {"city"}


@pytest.mark.slow
def test_a_forced_tool_streams_as_a_tool_use_block_with_its_input_json(embedded_server):
    with httpx.stream("POST", f"{embedded_server.base_url}/v1/messages", timeout=120,
                      json=body(model="demo", tools=[WEATHER], tool_choice=FORCED, max_tokens=100, stream=True),
                      headers={"x-api-key": embedded_server.api_key}) as response:
        events = sse(response)
    for name, payload in events:
        if name != "ping":
            STREAM_EVENT.validate_python(payload, strict=True)
    starts = [p["content_block"] for n, p in events if n == "content_block_start"]
    assert [block["type"] for block in starts] == ["tool_use"] and starts[0]["name"] == "get_weather"
    partial = "".join(p["delta"]["partial_json"] for n, p in events if n == "content_block_delta")
    assert set(json.loads(partial)) == {"city"}
    assert [p["delta"]["stop_reason"] for n, p in events if n == "message_delta"] == ["tool_use"]
    with client(embedded_server).messages.stream(model="demo", max_tokens=100, messages=HELLO, tools=[WEATHER],
                                                 tool_choice=FORCED, extra_body=GREEDY) as stream:
        final = stream.get_final_message()  # the client puts the input together from the input_json_delta
    assert final.content[0].input == json.loads(partial) and final.stop_reason == "tool_use"


@pytest.mark.slow
def test_a_tool_result_round_trip_is_accepted(embedded_server):
    call = {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Oslo"}}
    messages = [*HELLO, {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, call]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                                              "content": [{"type": "text", "text": "4 C"}]}]}]
    answer = create(embedded_server, model="demo", messages=messages, tools=[WEATHER], max_tokens=4)
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    counted = client(embedded_server).messages.count_tokens(model="demo", messages=HELLO, tools=[WEATHER])
    assert prompt_tokens(answer) > counted.input_tokens  # the call and its result are read too


# --- count_tokens -----------------------------------------------------------------------------------------


def test_it_counts_the_tokens_the_prompt_is_read_as(embedded_server):
    messages = [{"role": "user", "content": "How many tokens is this? " + secrets.token_hex(4)}]
    counted = client(embedded_server).messages.count_tokens(model="tiny", system="Be brief.", messages=messages)
    answered = create(embedded_server, system="Be brief.", messages=messages, max_tokens=1)
    assert counted.input_tokens == answered.usage.input_tokens + answered.usage.cache_read_input_tokens
    with_tools = client(embedded_server).messages.count_tokens(model="tiny", system="Be brief.", messages=messages,
                                                               tools=[WEATHER])
    assert with_tools.input_tokens > counted.input_tokens


def test_max_tokens_0_reads_the_prompt_and_generates_nothing(embedded_server):
    messages = [{"role": "user", "content": "Only read this. " + secrets.token_hex(4)}]
    message = create(embedded_server, messages=messages, max_tokens=0)
    assert [(block.type, block.text) for block in message.content] == [("text", "")]
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 0
    assert message.usage.input_tokens == client(embedded_server).messages.count_tokens(
        model="tiny", messages=messages).input_tokens


def test_count_tokens_answers_in_anthropics_shape(embedded_server):
    response = post(embedded_server, "/v1/messages/count_tokens", json={"model": "tiny", "messages": HELLO})
    assert response.status_code == 200, response.text
    assert at.MessageTokensCount.model_validate(response.json(), strict=True).input_tokens > 0
    assert set(response.json()) == {"input_tokens"}
    anthropic_error(post(embedded_server, "/v1/messages/count_tokens", json={"model": "nope", "messages": HELLO}),
                    404, "not_found_error")
    anthropic_error(post(embedded_server, "/v1/messages/count_tokens", json={"model": "tiny"}),
                    400, "invalid_request_error")


# --- keys ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
def test_it_takes_the_key_from_either_header(embedded_server, header):
    value = embedded_server.api_key if header == "x-api-key" else f"Bearer {embedded_server.api_key}"
    response = httpx.post(f"{embedded_server.base_url}/v1/messages", json=body(max_tokens=1), timeout=120,
                          headers={header: value})  # no anthropic-version: accepted without it
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "hth_wrong_key"}, {"Authorization": "Bearer hth_wrong_key"},
                                     {"x-api-key": ""}])
def test_it_refuses_a_missing_or_wrong_key_with_401(embedded_server, headers):
    response = httpx.post(f"{embedded_server.base_url}/v1/messages", json=body(), headers=headers, timeout=30)
    assert "x-api-key" in anthropic_error(response, 401, "authentication_error")


def test_the_client_raises_its_authentication_error(embedded_server):
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client(embedded_server, api_key="hth_wrong_key").messages.create(model="tiny", max_tokens=1, messages=HELLO)
    assert caught.value.body["type"] == "error"


def test_it_refuses_requests_over_a_keys_limit_with_429_and_retry_after(embedded_server):
    username = f"anthropic-{secrets.token_hex(3)}"
    key = embedded_server.create_user(username)
    embedded_server.manage("shell", "-c", (
        "from api.models import ApiKey; "
        f"ApiKey.objects.filter(prefix={key.split('_')[1]!r}).update(requests_per_minute=1)"))
    responses = [post(embedded_server, json=body(max_tokens=1), headers={"x-api-key": key}) for _ in range(3)]
    over = next(response for response in responses if response.status_code != 200)
    anthropic_error(over, 429, "rate_limit_error")
    assert 1 <= int(over.headers["Retry-After"]) <= 61


# --- errors -----------------------------------------------------------------------------------------------


def test_an_unknown_model_is_a_404_not_found_error(embedded_server):
    with pytest.raises(anthropic.NotFoundError) as caught:
        create(embedded_server, model="claude-nonexistent")
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "claude-nonexistent" in caught.value.body["error"]["message"]


@pytest.mark.parametrize(("fields", "says"), [
    ({"max_tokens": None}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type":
                                                                               "image/png", "data": "AAAA"}}]}]},
     "image blocks are not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "document blocks"),
    ({"messages": [*HELLO, {"role": "assistant", "content": "Sure,"}]}, "prefill"),
    ({"temperature": 3}, "temperature"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "Anthropic's own tools"),
    ({"tool_choice": {"type": "tool", "name": "get_weather"}}, "needs tools"),
    ({"messages": "hello"}, "messages"),
])
def test_a_bad_body_is_a_400_invalid_request_error_that_says_why(embedded_server, fields, says):
    payload = {k: v for k, v in body(**fields).items() if v is not None}
    assert says in anthropic_error(post(embedded_server, json=payload), 400, "invalid_request_error")


def test_invalid_json_and_invalid_text_are_400s_in_anthropics_shape(embedded_server):
    anthropic_error(post(embedded_server, content=b"{not json", headers={"Content-Type": "application/json"}),
                    400, "invalid_request_error")
    nul = json.dumps(body(messages=[{"role": "user", "content": "a\u0000b"}])).encode()
    anthropic_error(post(embedded_server, content=nul, headers={"Content-Type": "application/json"}),
                    400, "invalid_request_error")


def test_a_body_over_the_size_limit_is_a_413(embedded_server):
    from django.conf import settings as django_settings

    big = json.dumps(body(messages=[{"role": "user", "content": "x" * (django_settings.HEARTH_MAX_BODY_BYTES + 10)}]))
    response = post(embedded_server, content=big.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"type": "error", "error": {"type": "request_too_large",
                                                          "message": response.json()["error"]["message"]}}


def test_a_prompt_over_the_context_is_a_400(embedded_server):
    response = post(embedded_server, json=body(messages=[{"role": "user", "content": "word " * 2000}]))
    assert "maximum context length" in anthropic_error(response, 400, "invalid_request_error")


# --- fuzzing ----------------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 70) | st.floats(allow_nan=False, allow_infinity=False, width=32)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
BLOCK = st.fixed_dictionaries({"type": st.sampled_from(["text", "tool_use", "tool_result", "image", "thinking",
                                                        "document", "server_tool_use", "nope"])},
                              optional={"text": JSON, "id": JSON, "name": JSON, "input": JSON,
                                        "tool_use_id": JSON, "content": JSON, "is_error": JSON})
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]),
                                 "content": st.one_of(st.text(max_size=12), st.lists(BLOCK, max_size=3), JSON)})
BODY = st.fixed_dictionaries(
    {"model": st.sampled_from(["tiny", "missing-model"]) | JSON,
     "messages": st.lists(MESSAGE, min_size=0, max_size=3) | JSON},
    optional={"max_tokens": st.integers(-1, 8) | JSON, "system": st.text(max_size=8) | st.lists(BLOCK, max_size=2),
              "tools": st.lists(st.fixed_dictionaries({"name": st.text(max_size=6)},
                                                      optional={"input_schema": JSON, "type": JSON}), max_size=2),
              "tool_choice": st.fixed_dictionaries({"type": JSON | st.sampled_from(["auto", "any", "tool"])},
                                                   optional={"name": JSON}) | JSON,
              "stop_sequences": JSON, "temperature": JSON, "top_p": JSON, "top_k": JSON, "stream": st.booleans(),
              "metadata": JSON, "thinking": JSON})


def test_generated_bodies_never_get_a_5xx(embedded_server):
    statuses: dict[int, int] = {}

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(payload=BODY, path=st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]))
    def check(payload, path):
        response = post(embedded_server, path, json=payload)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (payload, response.text[:500])
        if response.status_code >= 400:
            assert response.json()["type"] == "error" and response.json()["error"]["message"], response.text

    check()
    assert statuses.get(400, 0) > 10
