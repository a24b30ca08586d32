"""The /v1 API of a real embedded Hearth server (subprocess, SQLite, worker thread, llama.cpp), driven by the
official openai client and by raw HTTP where the wire format itself is the point."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import openai_client

GREEDY = {"temperature": 0, "seed": 7}


def chat(client, **overrides):
    arguments = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 12,
                 **GREEDY}
    arguments.update(overrides)
    return client.chat.completions.create(**arguments)


def sse_events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def test_it_lists_the_library_as_openai_models(embedded_server):
    models = openai_client(embedded_server).models.list()
    assert "tiny" in [m.id for m in models.data]
    assert all(m.object == "model" and m.owned_by == "hearth" for m in models.data)


def test_it_answers_a_chat_completion_with_usage(embedded_server):
    completion = chat(openai_client(embedded_server))
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 12
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12


def test_it_streams_the_same_text_it_answers_whole(embedded_server):
    client = openai_client(embedded_server)
    whole = chat(client).choices[0].message.content
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 12


def test_it_ends_the_stream_with_done(embedded_server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{embedded_server.base_url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {embedded_server.api_key}"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])


def test_it_gives_identical_output_for_identical_requests_whatever_ran_before(embedded_server):
    client = openai_client(embedded_server)
    first = chat(client, max_tokens=24).choices[0].message.content
    chat(client, messages=[{"role": "user", "content": "Something else entirely, and longer " * 5}])
    assert chat(client, max_tokens=24).choices[0].message.content == first


def test_it_samples_reproducibly_with_a_seed(embedded_server):
    client = openai_client(embedded_server)
    sampled = {"temperature": 1.0, "top_p": 0.9, "seed": 1234, "max_tokens": 24}
    assert chat(client, **sampled).choices[0].message.content == chat(client, **sampled).choices[0].message.content


def test_it_cuts_at_a_stop_string_and_reports_stop(embedded_server):
    client = openai_client(embedded_server)
    text = chat(client, max_tokens=40).choices[0].message.content
    stop = text[10:13]
    assert stop.strip(), f"pick a visible stop string from {text!r}"
    stopped = chat(client, max_tokens=40, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]


def test_it_answers_raw_completions(embedded_server):
    completion = openai_client(embedded_server).completions.create(model="tiny", prompt="Once upon", max_tokens=5,
                                                                    temperature=0)
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5


def test_it_refuses_a_prompt_longer_than_the_context(embedded_server):
    client = openai_client(embedded_server)
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, messages=[{"role": "user", "content": "the " * 2000}])
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["code"] == "context_length_exceeded"
    assert "512" in error["message"]


def test_it_ends_with_length_when_the_reply_fills_the_context(embedded_server):
    completion = chat(openai_client(embedded_server), max_tokens=None,
                      messages=[{"role": "user", "content": "the " * 240}])
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.total_tokens == 512


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 5}, "temperature"),
        ({"model": "tiny", "messages": []}, "messages"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_p": "high"}, "top_p"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 17}, "n"),
    ],
)
def test_it_rejects_invalid_parameters_with_400_naming_them(embedded_server, body, param):
    response = httpx.post(f"{embedded_server.base_url}/v1/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {embedded_server.api_key}"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


def test_it_rejects_malformed_json_with_400(embedded_server):
    response = httpx.post(f"{embedded_server.base_url}/v1/chat/completions", content=b'{"model": "tiny", ',
                          headers={"Authorization": f"Bearer {embedded_server.api_key}",
                                   "Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Bearer hth_000000000000_wrong", "Basic abc"])
def test_it_refuses_requests_without_a_valid_api_key(embedded_server, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.get(f"{embedded_server.base_url}/v1/models", headers=headers, timeout=30)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_it_answers_404_for_an_unknown_model(embedded_server):
    with pytest.raises(openai.NotFoundError) as caught:
        chat(openai_client(embedded_server), model="no-such-model")
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"


def test_it_says_which_backend_served_the_request(embedded_server):
    response = openai_client(embedded_server).chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert response.headers["x-hearth-backend"] == "llamacpp"


def test_it_reports_health_of_database_broker_and_worker(embedded_server):
    health = httpx.get(f"{embedded_server.base_url}/health", timeout=30).json()
    assert health["status"] == "ok"
    assert health["mode"] == "embedded"
    assert health["database"] == "ok"
    assert health["workers"]["alive"] == 1
