"""Hearth's responses validated against the schemas of OpenAI's published spec (openai/openai-openapi
`openapi.json`; the parts these tests need are in tests/data/openai_response_schemas.json): chat and text
completions, models, embeddings, errors, and the Responses API's objects and stream events."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

import httpx
import jsonschema_rs
import pytest

SCHEMAS = Path(__file__).resolve().parent.parent / "data" / "openai_response_schemas.json"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6, "temperature": 0}


def nullable_as_json_schema(node):
    """The spec still marks optional values OpenAPI 3.0's way (`nullable: true`), which JSON Schema 2020-12
    ignores: read each as "this schema, or null", as OpenAI's own SDK generators do."""
    if isinstance(node, list):
        return [nullable_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: nullable_as_json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@cache
def validator(name: str):
    schemas = nullable_as_json_schema(json.loads(SCHEMAS.read_text())["components"]["schemas"])
    # A stream chunk's `usage` "contains a null value except for the last chunk" (its description in the spec),
    # though its schema is a bare $ref.
    usage = schemas["CreateChatCompletionStreamResponse"]["properties"]["usage"]
    schemas["CreateChatCompletionStreamResponse"]["properties"]["usage"] = {"anyOf": [usage, {"type": "null"}]}
    # The spec has no schema for streamed text completions: OpenAI sends CreateCompletionResponse objects whose
    # finish_reason is null until the last text chunk.
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    choice = chunk["properties"]["choices"]["items"]["properties"]
    choice["finish_reason"] = {"anyOf": [choice["finish_reason"], {"type": "null"}]}
    chunk["properties"]["usage"] = {"anyOf": [chunk["properties"]["usage"], {"type": "null"}]}  # as chat chunks
    schemas["CompletionStreamChunk"] = chunk
    return jsonschema_rs.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                               "components": {"schemas": schemas}})


def assert_conforms(name: str, instance) -> None:
    errors = [f"{error.instance_path}: {error.message}" for error in validator(name).iter_errors(instance)]
    assert not errors, f"{name}: {errors}\n{json.dumps(instance)[:1500]}"


def call(server, method: str, path: str, body=None, key: str | None = None) -> httpx.Response:
    return httpx.request(method, f"{server.base_url}{path}", json=body, timeout=120,
                         headers={"Authorization": f"Bearer {key or server.api_key}"})


def stream(server, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{server.base_url}{path}", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {server.api_key}"}) as response:
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@pytest.mark.parametrize("extra", [{}, {"n": 2, "temperature": 1, "seed": 1}, {"stop": ["\n"]}])
def test_chat_completions_conform(embedded_server, extra):
    response = call(embedded_server, "POST", "/v1/chat/completions", {**CHAT, **extra})
    assert response.status_code == 200
    assert_conforms("CreateChatCompletionResponse", response.json())


@pytest.mark.parametrize("extra", [{}, {"stream_options": {"include_usage": True}}, {"n": 2, "seed": 3}])
def test_chat_completion_chunks_conform(embedded_server, extra):
    chunks = stream(embedded_server, "/v1/chat/completions", {**CHAT, "stream": True, **extra})
    assert len(chunks) >= 3
    for chunk in chunks:
        assert_conforms("CreateChatCompletionStreamResponse", chunk)


@pytest.mark.parametrize("extra", [{}, {"prompt": ["a", "b"], "n": 2}])
def test_completions_conform(embedded_server, extra):
    body = {"model": "tiny", "prompt": "Once upon", "max_tokens": 5, "temperature": 0, **extra}
    response = call(embedded_server, "POST", "/v1/completions", body)
    assert response.status_code == 200
    assert_conforms("CreateCompletionResponse", response.json())


@pytest.mark.parametrize("extra", [{}, {"stream_options": {"include_usage": True}}, {"n": 2, "seed": 3}])
def test_completion_chunks_conform(embedded_server, extra):
    body = {"model": "tiny", "prompt": "Once upon", "max_tokens": 5, "stream": True, **extra}
    chunks = stream(embedded_server, "/v1/completions", body)
    for chunk in chunks:
        assert_conforms("CompletionStreamChunk", chunk)
    if not extra:
        assert_conforms("CreateCompletionResponse", chunks[-1])  # the last text chunk names its finish_reason


def test_models_conform(embedded_server):
    assert_conforms("ListModelsResponse", call(embedded_server, "GET", "/v1/models").json())
    assert_conforms("Model", call(embedded_server, "GET", "/v1/models/tiny").json())


def test_embeddings_conform(embedded_server):
    response = call(embedded_server, "POST", "/v1/embeddings", {"model": "tiny", "input": ["one", "two"]})
    assert response.status_code == 200
    assert_conforms("CreateEmbeddingResponse", response.json())


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/v1/chat/completions", {"model": "tiny", "messages": []}, 400),
    ("POST", "/v1/chat/completions", {**CHAT, "model": "nope"}, 404),
    ("POST", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "x " * 3000}]}, 400),
    ("GET", "/v1/models/nope", None, 404),
    ("POST", "/v1/embeddings", {"model": "tiny", "input": ""}, 400),
])
def test_errors_conform(embedded_server, method, path, body, status):
    response = call(embedded_server, method, path, body)
    assert response.status_code == status
    assert_conforms("ErrorResponse", response.json())


@pytest.mark.parametrize("extra", [{}, {"max_output_tokens": 40, "instructions": "Be brief."},
                                   {"text": {"format": {"type": "json_object"}}}])
def test_responses_conform(embedded_server, extra):
    body = {"model": "tiny", "input": "Hello", "max_output_tokens": 6, "temperature": 0, **extra}
    response = call(embedded_server, "POST", "/v1/responses", body)
    assert response.status_code == 200
    assert_conforms("Response", response.json())
    items = call(embedded_server, "GET", f"/v1/responses/{response.json()['id']}/input_items")
    assert_conforms("ResponseItemList", items.json())


def test_response_stream_events_conform(embedded_server):
    body = {"model": "tiny", "input": [{"role": "user", "content": "Hello"}], "max_output_tokens": 6,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{embedded_server.base_url}/v1/responses", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {embedded_server.api_key}"}) as response:
        events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines()
                  if line.startswith("data: ")]
    assert [e["type"] for e in events][:2] == ["response.created", "response.in_progress"]
    for event in events:
        assert_conforms("ResponseStreamEvent", event)


def test_authentication_errors_conform(embedded_server):
    response = call(embedded_server, "GET", "/v1/models", key="hth_0_wrong")
    assert response.status_code == 401
    assert_conforms("ErrorResponse", response.json())
