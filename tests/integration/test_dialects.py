"""What every dialect shares, checked the same way for each: the x-hearth-* headers, the job row's accounting
(the key, the backend, the tokens), the backend choice, and a refused request in the dialect's own error shape.
Each dialect is one request body here; the sections of docs/api.md say what each one honours."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from tests.factories import build_tiny_gguf

HELLO = [{"role": "user", "content": "Hello there"}]
DIALECTS = {
    "openai": ("/v1/chat/completions", {"model": "tiny", "messages": HELLO, "max_tokens": 5, "temperature": 0}),
    "responses": ("/v1/responses", {"model": "tiny", "input": "Hello there", "max_output_tokens": 5,
                                    "temperature": 0}),
    "anthropic": ("/v1/messages", {"model": "tiny", "messages": HELLO, "max_tokens": 5, "temperature": 0}),
    "ollama": ("/api/chat", {"model": "tiny", "messages": HELLO, "stream": False,
                             "options": {"num_predict": 5, "temperature": 0}}),
}


WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                          "required": ["city"]}}
TOOLS = {  # the same function, and "auto", as each dialect writes them
    "openai": {"tools": [{"type": "function", "function": WEATHER}], "tool_choice": "auto"},
    "responses": {"tools": [{"type": "function", **WEATHER}], "tool_choice": "auto"},
    "anthropic": {"tools": [{"name": WEATHER["name"], "description": WEATHER["description"],
                             "input_schema": WEATHER["parameters"]}], "tool_choice": {"type": "auto"}},
    "ollama": {"tools": [{"type": "function", "function": WEATHER}]},
}


def text_and_calls(dialect: str, payload: dict) -> tuple[str, list[tuple[str, dict]]]:
    """The answer's text and its calls as (name, arguments), read from the dialect's own shape."""
    if dialect == "openai":
        message = payload["choices"][0]["message"]
        return message["content"] or "", [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                                          for c in message.get("tool_calls") or []]
    if dialect == "responses":
        items = payload["output"]
        text = "".join(part["text"] for item in items if item["type"] == "message" for part in item["content"])
        return text, [(i["name"], json.loads(i["arguments"])) for i in items if i["type"] == "function_call"]
    if dialect == "anthropic":
        blocks = payload["content"]
        return ("".join(b["text"] for b in blocks if b["type"] == "text"),
                [(b["name"], b["input"]) for b in blocks if b["type"] == "tool_use"])
    message = payload["message"]
    return message["content"], [(c["function"]["name"], c["function"]["arguments"])
                                for c in message.get("tool_calls") or []]


@pytest.fixture(scope="module")
def roomy_model(embedded_server, tmp_path_factory) -> str:
    """A tiny model with room for a tools prompt (4096 tokens; the session's "tiny" has 512)."""
    path = build_tiny_gguf(tmp_path_factory.mktemp("dialects") / "roomy.gguf", context_length=4096)
    embedded_server.manage("import_model", str(path), "--name", "tiny-roomy")
    return "tiny-roomy"


def post(server, dialect: str, key: str, **changes) -> httpx.Response:
    path, body = DIALECTS[dialect]
    return httpx.post(f"{server.base_url}{path}", json={**body, **changes}, timeout=120,
                      headers={"Authorization": f"Bearer {key}"})


def error_message(dialect: str, response: httpx.Response) -> str:
    """The message, from the dialect's own shape."""
    payload = response.json()
    if dialect == "ollama":
        return payload["error"]
    if dialect == "anthropic":
        assert payload["type"] == "error"
    return payload["error"]["message"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_dialect_names_the_backend_and_the_job_and_counts_the_tokens_on_the_key(embedded_server, dialect):
    key = embedded_server.create_user(f"dialect-{dialect}")
    response = post(embedded_server, dialect, key)
    assert response.status_code == 200, response.text
    assert response.headers["x-hearth-backend"] == "llamacpp"
    job_id = response.headers["x-hearth-job"].replace("-", "")
    with sqlite3.connect(embedded_server.data_dir / "hearth.sqlite3", timeout=30) as db:
        row = db.execute(
            "SELECT j.status, j.backend, j.prompt_tokens, j.completion_tokens, k.prefix FROM "
            "inference_generationjob j JOIN api_apikey k ON k.id = j.api_key_id WHERE j.id = ?",
            (job_id,)).fetchone()
    status, backend, prompt_tokens, completion_tokens, prefix = row
    assert (status, backend) == ("succeeded", "llamacpp")
    assert prompt_tokens > 0 and 0 < completion_tokens <= 5
    assert key.startswith(f"hth_{prefix}_")


@pytest.mark.parametrize("dialect", ["openai", "responses", "anthropic"])
def test_an_unknown_backend_is_refused_before_anything_is_queued_in_the_dialects_shape(embedded_server, dialect):
    response = post(embedded_server, dialect, embedded_server.api_key, backend="warp-drive")
    assert response.status_code == 400
    assert "Unknown backend 'warp-drive'" in error_message(dialect, response)
    assert "x-hearth-job" not in response.headers


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_unknown_model_is_a_404_in_the_dialects_shape(embedded_server, dialect):
    response = post(embedded_server, dialect, embedded_server.api_key, model="no-such-model")
    assert response.status_code == 404
    assert "no-such-model" in error_message(dialect, response)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_missing_key_is_a_401_in_the_dialects_shape(embedded_server, dialect):
    response = post(embedded_server, dialect, "hth_0_wrong")
    assert response.status_code == 401
    assert error_message(dialect, response)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_tools_with_auto_answer_in_text_or_with_a_named_call_in_every_dialect(embedded_server, roomy_model, dialect):
    limit = {"openai": "max_tokens", "responses": "max_output_tokens", "anthropic": "max_tokens"}.get(dialect)
    length = {limit: 40} if limit else {"options": {"num_predict": 40, "temperature": 0}}
    response = post(embedded_server, dialect, embedded_server.api_key, model=roomy_model, **TOOLS[dialect],
                    **length)
    assert response.status_code == 200, response.text
    text, calls = text_and_calls(dialect, response.json())
    assert text or calls
    assert all(name == "get_weather" and isinstance(arguments, dict) for name, arguments in calls)
