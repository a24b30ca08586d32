"""What every dialect shares, checked the same way for each: the x-hearth-* headers, the job row's accounting
(the key, the backend, the tokens), the backend choice, and a refused request in the dialect's own error shape.
Each dialect is one request body here; the sections of docs/api.md say what each one honours."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

HELLO = [{"role": "user", "content": "Hello there"}]
DIALECTS = {
    "openai": ("/v1/chat/completions", {"model": "tiny", "messages": HELLO, "max_tokens": 5, "temperature": 0}),
    "responses": ("/v1/responses", {"model": "tiny", "input": "Hello there", "max_output_tokens": 5,
                                    "temperature": 0}),
    "anthropic": ("/v1/messages", {"model": "tiny", "messages": HELLO, "max_tokens": 5, "temperature": 0}),
    "ollama": ("/api/chat", {"model": "tiny", "messages": HELLO, "stream": False,
                             "options": {"num_predict": 5, "temperature": 0}}),
}


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
