"""Errors of the /v1 API on a real embedded server: OpenAI's envelope and the right status, never a 500."""

from __future__ import annotations

import json

import httpx
import pytest
from django.conf import settings

BODY_LIMIT = settings.HEARTH_MAX_BODY_BYTES  # the test servers run with the same default


def post(server, path: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.api_key}", **kwargs.pop("headers", {})}
    return httpx.post(f"{server.base_url}{path}", headers=headers, timeout=120, **kwargs)


def assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code:
        assert error["code"] == code
    return error


def big_chat_body(size: int) -> bytes:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x" * size}], "max_tokens": 1}
    return json.dumps(body).encode()


def test_it_answers_413_for_a_body_over_the_size_limit(embedded_server):
    response = post(embedded_server, "/v1/chat/completions", content=big_chat_body(BODY_LIMIT + 1000),
                    headers={"Content-Type": "application/json"})
    error = assert_envelope(response, 413, "request_too_large")
    assert str(BODY_LIMIT) in error["message"]


def test_it_answers_413_for_a_chunked_body_over_the_limit(embedded_server):
    data = big_chat_body(BODY_LIMIT + 1000)

    def chunks():
        for start in range(0, len(data), 65536):
            yield data[start:start + 65536]

    response = post(embedded_server, "/v1/chat/completions", content=chunks(),
                    headers={"Content-Type": "application/json"})
    assert_envelope(response, 413, "request_too_large")


def test_it_answers_a_large_body_under_the_limit_with_a_context_error_not_413(embedded_server):
    response = post(embedded_server, "/v1/chat/completions", content=big_chat_body(200_000),
                    headers={"Content-Type": "application/json"})
    assert_envelope(response, 400, "context_length_exceeded")


@pytest.mark.parametrize("extra", [
    {"store": True, "metadata": {"a": "b"}, "service_tier": "auto"},
    {"unknown": None, "nested": {"deep": [1, {"x": None}]}, "reasoning_effort": "high"},
    {"functions": [{"name": "f"}], "function_call": "auto", "modalities": ["text"], "audio": None},
    {"prediction": {"type": "content", "content": "x"}, "web_search_options": {}, "🔥": "🔥"},
])
def test_it_ignores_unknown_fields_rather_than_failing(embedded_server, extra):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}
    response = post(embedded_server, "/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    completion = post(embedded_server, "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2,
                                                                 **extra})
    assert completion.status_code == 200, completion.text


@pytest.mark.parametrize("body", [
    [], "text", 3, None, {"model": ["tiny"], "messages": "hi"}, {"model": "tiny", "messages": [None]},
    {"model": "tiny", "messages": [{"role": "user", "content": {"x": 1}}]},
    {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": {"a": 1}},
    {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logit_bias": [1, 2]},
    {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream_options": "yes"},
])
def test_it_answers_malformed_bodies_with_400_in_the_envelope(embedded_server, body):
    assert_envelope(post(embedded_server, "/v1/chat/completions", json=body), 400)


def test_it_answers_a_body_that_is_not_utf8_with_400(embedded_server):
    response = post(embedded_server, "/v1/chat/completions", content=b'{"model": "\xff\xfe"}',
                    headers={"Content-Type": "application/json"})
    assert_envelope(response, 400)


def test_it_refuses_an_unknown_backend_with_400_before_queueing_a_job(embedded_server):
    response = post(embedded_server, "/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "backend": "tensorrt"})
    error = assert_envelope(response, 400)
    assert error["message"] == "Unknown backend 'tensorrt'; choose llamacpp, torch or mlx."


@pytest.mark.parametrize("method, path", [("GET", "/v1/nope"), ("POST", "/v1/chat/nope"), ("GET", "/v1/"),
                                          ("DELETE", "/v1")])
def test_it_answers_an_unknown_api_path_with_openais_json_404(embedded_server, method, path):
    response = httpx.request(method, f"{embedded_server.base_url}{path}", timeout=30,
                             headers={"Authorization": f"Bearer {embedded_server.api_key}"})
    error = assert_envelope(response, 404, "unknown_url")
    assert error["message"] == f"Invalid URL ({method} {path})"
