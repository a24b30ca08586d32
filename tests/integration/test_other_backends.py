"""The torch engine and MLX served through the same worker, relay and API as llama.cpp."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import time

import httpx
import pytest

from tests import servers
from tests.conftest import openai_client

needs_mlx = pytest.mark.skipif(importlib.util.find_spec("mlx") is None, reason="mlx is not installed here")


def special_token_ids(model_dir) -> dict[str, int]:
    tokens = json.loads((model_dir / "tokenizer.json").read_text())["added_tokens"]
    return {t["content"]: t["id"] for t in tokens}


@pytest.mark.parametrize("model", ["hf-tiny", "hf-bf16", pytest.param("hf-mlx", marks=needs_mlx)])
def test_it_serves_a_hugging_face_model_streamed_and_whole(embedded_server, model):
    client = openai_client(embedded_server)
    arguments = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
                 "temperature": 0}
    response = client.chat.completions.with_raw_response.create(**arguments)
    whole = response.parse()
    assert response.headers["x-hearth-backend"] == ("mlx" if model == "hf-mlx" else "torch")
    assert whole.usage.completion_tokens == 8
    chunks = list(client.chat.completions.create(**arguments, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 8
    if model == "hf-bf16":  # compiled inside the server's worker thread, not fallen back to F.linear
        logs = "".join(log.read_text(errors="replace") for log in embedded_server.logs if log.exists())
        assert "matrix-vector kernel unavailable" not in logs


@pytest.fixture(scope="module")
def short_grace_server(tmp_path_factory, tiny_hf):
    """A server whose hung-up streams are stopped after 1 s: the tiny models write a whole context of tokens in
    less than the default grace of 5 s on a fast machine, and a job that ends by itself shows no cancel."""
    server = servers.start_embedded(tmp_path_factory.mktemp("short-grace"),
                                    {"hf-tiny": tiny_hf, "hf-mlx": (tiny_hf, "mlx")},
                                    HEARTH_RESUME_GRACE_SECONDS="1")
    yield server
    server.stop()


@pytest.mark.parametrize("model", ["hf-tiny", pytest.param("hf-mlx", marks=needs_mlx)])
def test_a_disconnecting_client_cancels_generation_on_every_backend(short_grace_server, tiny_hf, model):
    embedded_server = short_grace_server
    never_end = {str(i): -100 for i in special_token_ids(tiny_hf).values()}
    body = {"model": model, "messages": [{"role": "user", "content": "go on"}], "stream": True,
            "max_tokens": 3500, "logit_bias": never_end}
    headers = {"Authorization": f"Bearer {embedded_server.api_key}"}
    with httpx.stream("POST", f"{embedded_server.base_url}/v1/chat/completions", json=body, headers=headers,
                      timeout=120) as response:
        assert response.status_code == 200
        for seen, _line in enumerate(response.iter_lines()):
            if seen > 6:
                break
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with sqlite3.connect(embedded_server.data_dir / "hearth.sqlite3", timeout=30) as db:
            status, tokens = db.execute(
                "SELECT status, completion_tokens FROM inference_generationjob WHERE model_name = ? "
                "ORDER BY created_at DESC LIMIT 1", (model,)).fetchone()
        if status == "cancelled":
            break
        time.sleep(0.1)
    assert status == "cancelled"
    assert tokens < 3500
