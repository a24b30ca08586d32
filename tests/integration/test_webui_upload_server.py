"""Uploads through the real ASGI server: chunks bigger than Django's in-memory body limit arrive whole, and a
corrupt GGUF is refused with a readable message, never a 500."""

from __future__ import annotations

import re

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
