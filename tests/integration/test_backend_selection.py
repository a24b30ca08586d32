"""Backend choice and fallback chains through the API: each fallback is real, recorded and explained."""

from __future__ import annotations

import json
import sqlite3

import openai
import pytest

from tests.conftest import openai_client
from tests.factories import build_tiny_hf_dir


def chat(server, model, **extra):
    return openai_client(server).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0, **extra)


def last_job(server, model):
    with sqlite3.connect(server.data_dir / "hearth.sqlite3", timeout=30) as db:
        backend, fallbacks, status = db.execute(
            "SELECT backend, fallbacks, status FROM inference_generationjob WHERE model_name = ? "
            "ORDER BY created_at DESC LIMIT 1", (model,)).fetchone()
    return backend, json.loads(fallbacks), status


def test_the_request_choice_wins_over_the_format(embedded_server):
    response = chat(embedded_server, "tiny", extra_body={"backend": "torch"})
    assert response.headers["x-hearth-backend"] == "torch"
    assert "x-hearth-fallback" not in response.headers


def test_a_backend_that_cannot_load_the_model_falls_back_along_its_chain(embedded_server):
    response = chat(embedded_server, "tiny", extra_body={"backend": "mlx"})  # mlx cannot read a GGUF file
    assert response.headers["x-hearth-backend"] == "torch"
    assert response.headers["x-hearth-fallback"].startswith("mlx: ")
    assert response.parse().usage.completion_tokens == 3
    backend, fallbacks, status = last_job(embedded_server, "tiny")
    assert (backend, status) == ("torch", "succeeded")
    assert [step["backend"] for step in fallbacks] == ["mlx"]


def test_when_no_backend_can_serve_the_503_names_each_and_why(embedded_server, tmp_path):
    directory = build_tiny_hf_dir(tmp_path / "olmo")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "olmo"}))
    embedded_server.manage("import_model", str(directory), "--name", "olmo-tiny")
    with pytest.raises(openai.APIStatusError) as caught:
        chat(embedded_server, "olmo-tiny")
    assert caught.value.status_code == 503
    error = caught.value.body
    assert error["code"] == "no_backend_available"
    assert "torch:" in error["message"] and "llamacpp:" in error["message"]
    assert "olmo" in error["message"]
    assert last_job(embedded_server, "olmo-tiny")[2] == "failed"


def test_an_unknown_backend_name_is_a_clear_error(embedded_server):
    with pytest.raises(openai.APIStatusError) as caught:
        chat(embedded_server, "tiny", extra_body={"backend": "tensorrt"})
    assert "tensorrt" in caught.value.body["message"]
