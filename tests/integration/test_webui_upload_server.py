"""Uploads through the real ASGI server: chunks bigger than Django's in-memory body limit arrive whole, and a
corrupt GGUF is refused with a readable message, never a 500. The library page shows what workers hold loaded."""

from __future__ import annotations

import re

import pytest

from tests.integration.chat_client import login


def test_a_big_chunk_arrives_whole_and_a_corrupt_gguf_is_refused_readably(embedded_server):
    client = login(embedded_server)
    token = client.cookies["csrftoken"]
    headers = {"X-CSRFToken": token, "Referer": f"{embedded_server.base_url}/models/"}
    data = b"GGUF" + b"\x03\x00\x00\x00" + bytes(range(256)) * 24_000  # ~6 MB, not a real model
    created = client.post("/models/uploads/", json={"filename": "corrupt.gguf", "size": len(data)}, headers=headers)
    assert created.status_code == 201, created.text
    upload_id = created.json()["id"]
    put = client.put(f"/models/uploads/{upload_id}/?offset=0", content=data, headers=headers)
    assert put.status_code == 200, put.text
    assert put.json()["received"] == len(data)
    finished = client.post(f"/models/uploads/{upload_id}/finish/", headers=headers)
    assert finished.status_code == 400, finished.text
    assert finished.json()["error"]["message"]
    page = client.get("/models/").text
    assert "corrupt" not in re.sub(r"<script.*?</script>", "", page, flags=re.S)
    assert not (embedded_server.data_dir / "models" / "corrupt.gguf").exists()


def load_state(client, model: str) -> str:
    page = client.get("/models/").text
    row = re.search(rf'<tr data-model="{re.escape(model)}">(.*?)</tr>', page, flags=re.S)
    assert row, f"{model} is not in the library table"
    cell = re.search(r'<td class="load-state"[^>]*>(.*?)</td>', row.group(1), flags=re.S)
    return re.sub(r"<[^>]+>", "", cell.group(1)).strip()


@pytest.mark.parametrize("server_fixture", ["embedded_server", pytest.param("production_server",
                                                                          marks=pytest.mark.production)])
def test_the_library_shows_a_model_loaded_once_a_worker_has_it_in_memory(request, server_fixture, tiny_gguf):
    """In production the beat travels through Redis from a separate `celery worker` process."""
    import time

    from tests.conftest import openai_client

    server = request.getfixturevalue(server_fixture)
    client = login(server)
    headers = {"X-CSRFToken": client.cookies["csrftoken"], "Referer": f"{server.base_url}/models/"}
    data = tiny_gguf.read_bytes()
    created = client.post("/models/uploads/", json={"filename": "state.gguf", "size": len(data),
                                                    "name": "load-state-tiny"}, headers=headers).json()
    assert client.put(f"/models/uploads/{created['id']}/?offset=0", content=data, headers=headers).status_code == 200
    assert client.post(f"/models/uploads/{created['id']}/finish/", headers=headers).status_code == 200
    assert load_state(client, "load-state-tiny") == "not loaded"

    reply = openai_client(server).chat.completions.create(
        model="load-state-tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length")

    deadline, state = time.monotonic() + 10, ""
    while time.monotonic() < deadline:
        state = load_state(client, "load-state-tiny")
        if state.startswith("loaded"):
            break
        time.sleep(0.2)
    assert state == "loaded (llamacpp)"
    health = client.get("/health").json()
    assert health["workers"]["alive"] == 1  # the richer beat still counts as one live worker
