"""response_format, tools and logprobs on a real embedded server (llama.cpp grammars, logits of the sampled
position). They need the engine request's `grammar` and `logprobs` fields; without them the API refuses these
parameters by name (tests/unit/test_openai_schemas.py)."""

from __future__ import annotations

import json
import math

import httpx
import jsonschema_rs
import pytest

from tests.conftest import openai_client

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 10}, "role": {"enum": ["admin", "member"]},
                   "tags": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}},
    "required": ["name", "role"],
    "additionalProperties": False,
}
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"]}}}]
USER = [{"role": "user", "content": "Describe a person as JSON."}]


def test_every_json_schema_answer_that_stops_validates(embedded_server):
    client, validator = openai_client(embedded_server), jsonschema_rs.Draft202012Validator(PERSON)
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    checked = 0
    for seed in range(16):
        choice = client.chat.completions.create(model="tiny", messages=USER, max_tokens=120, seed=seed,
                                                response_format=response_format).choices[0]
        if choice.finish_reason == "stop" and "\ufffd" not in choice.message.content:  # see test_grammar.py
            assert validator.is_valid(json.loads(choice.message.content)), choice.message.content
            checked += 1
    assert checked >= 4


def test_json_object_mode_answers_a_json_object(embedded_server):
    client = openai_client(embedded_server)
    answers = [client.chat.completions.create(model="tiny", messages=USER, max_tokens=120, seed=seed,
                                              response_format={"type": "json_object"}).choices[0]
               for seed in range(6)]
    finished = [a.message.content for a in answers if a.finish_reason == "stop"]
    assert finished and all(isinstance(json.loads(text), dict) for text in finished)


# The tools' description alone fills most of the tiny model's 512-token context: tool calls run on the demo model.
@pytest.mark.slow
def test_a_required_tool_call_comes_back_as_tool_calls(embedded_server):
    client = openai_client(embedded_server).with_options(timeout=300)
    for seed in range(6):
        choice = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=WEATHER,
            tool_choice="required", max_tokens=60, seed=seed).choices[0]
        if choice.finish_reason == "tool_calls":
            break
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert set(json.loads(call.function.arguments)) == {"city"}


@pytest.mark.slow
def test_tool_calls_stream_as_deltas(embedded_server):
    client = openai_client(embedded_server).with_options(timeout=300)
    for seed in range(6):
        chunks = list(client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=WEATHER, seed=seed,
            tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=60, stream=True))
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        if finishes == ["tool_calls"]:
            break
    assert finishes == ["tool_calls"]
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather" and deltas[0].index == 0
    assert deltas[0].function.arguments == "" and deltas[0].id.startswith("call_")
    assert "city" in json.loads("".join(d.function.arguments for d in deltas[1:]))  # the pieces add up


@pytest.mark.slow
def test_a_conversation_with_tool_results_continues(embedded_server):
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 4}"},
    ]
    completion = openai_client(embedded_server).chat.completions.create(model="demo", messages=messages,
                                                                        tools=WEATHER, max_tokens=8, temperature=0)
    assert completion.choices[0].finish_reason in ("length", "stop", "tool_calls")
    assert completion.usage.prompt_tokens > 100  # the tools and the exchange are in the prompt


def test_a_model_whose_backends_cannot_constrain_decoding_refuses_by_name(embedded_server):
    # hf-mlx runs on mlx, then torch: neither has grammars or logprobs (hf-tiny would reach llama.cpp, converted)
    for extra, param in [({"response_format": {"type": "json_object"}}, "response_format"),
                         ({"tools": WEATHER, "tool_choice": "required"}, "tools"),
                         ({"logprobs": True}, "logprobs")]:
        response = httpx.post(f"{embedded_server.base_url}/v1/chat/completions", timeout=60,
                              headers={"Authorization": f"Bearer {embedded_server.api_key}"},
                              json={"model": "hf-mlx", "messages": USER, "max_tokens": 2, **extra})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
        assert "llama.cpp" in response.json()["error"]["message"]


def test_chat_logprobs_cover_every_token_with_the_asked_alternatives(embedded_server):
    client = openai_client(embedded_server)
    completion = client.chat.completions.create(model="tiny", messages=USER, max_tokens=10, temperature=0,
                                                logprobs=True, top_logprobs=4)
    content = completion.choices[0].logprobs.content
    assert len(content) == completion.usage.completion_tokens == 10
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 4
        assert math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-5)  # greedy: the best
    assert completion.choices[0].logprobs.refusal is None
    plain = client.chat.completions.create(model="tiny", messages=USER, max_tokens=10, temperature=0)
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == completion.choices[0].message.content


def test_streamed_chat_chunks_carry_their_tokens_logprobs(embedded_server):
    chunks = list(openai_client(embedded_server).chat.completions.create(
        model="tiny", messages=USER, max_tokens=6, temperature=0, logprobs=True, stream=True))
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == 6 and all(e.top_logprobs == [] for e in entries)


def test_completion_logprobs_use_the_legacy_shape(embedded_server):
    response = httpx.post(f"{embedded_server.base_url}/v1/completions", timeout=60,
                          headers={"Authorization": f"Bearer {embedded_server.api_key}"},
                          json={"model": "tiny", "prompt": "Once upon", "max_tokens": 5, "temperature": 0,
                                "logprobs": 2})
    logprobs = response.json()["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["text_offset"]) == 5
    assert all(len(alternatives) <= 2 for alternatives in logprobs["top_logprobs"])
    assert logprobs["text_offset"][0] == 0


def test_an_unusable_schema_is_a_400_naming_response_format(embedded_server):
    response = httpx.post(f"{embedded_server.base_url}/v1/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {embedded_server.api_key}"},
                          json={"model": "tiny", "messages": USER, "response_format": {
                              "type": "json_schema", "json_schema": {"name": "x",
                                                                     "schema": {"$ref": "https://x.test/s"}}}})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "response_format"


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": USER}),
    ("/v1/chat/completions", {"messages": USER, "tools": WEATHER, "tool_choice": "required"}),
    ("/v1/chat/completions", {"messages": USER, "logprobs": True}),
    ("/v1/completions", {"prompt": "Once"}),
])
def test_an_unknown_backend_is_a_400_naming_backend(embedded_server, path, body):
    response = httpx.post(f"{embedded_server.base_url}{path}", timeout=60,
                          headers={"Authorization": f"Bearer {embedded_server.api_key}"},
                          json={"model": "tiny", "max_tokens": 1, "backend": "tensorrt", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "backend" and error["message"].startswith("Unknown backend 'tensorrt'")
