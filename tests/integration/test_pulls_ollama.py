"""Ollama's /api/pull on a real embedded Hearth server whose HF_ENDPOINT is the tests' stand-in hub: the official
`ollama` client pulls a Hugging Face model by the name Ollama gives it, watches Ollama's progress lines, then chats
with the model by that name. Administrators only; the other model-changing paths stay refused."""

from __future__ import annotations

import httpx
import ollama
import pytest

from tests import servers

Q4_SIZE = 4189952


@pytest.fixture(scope="module")
def server(tmp_path_factory, hub, tiny_gguf):
    data = tmp_path_factory.mktemp("pull-server")
    server = servers.start_embedded(data, {"tiny": tiny_gguf}, HF_ENDPOINT=hub.url, HF_HOME=str(data / "hf-home"),
                                    HF_TOKEN="", HF_HUB_OFFLINE="0", HEARTH_PULL_RETRIES="1",
                                    HEARTH_PULL_BACKOFF_SECONDS="0.1")
    yield server
    server.stop()


def client(server, key: str | None = None) -> ollama.Client:
    return ollama.Client(host=server.base_url, headers={"Authorization": f"Bearer {key or server.api_key}"},
                         timeout=120)


def test_it_pulls_a_hugging_face_name_with_ollama_s_progress_and_answers_by_that_name(server, hub):
    name = f"hf.co/{hub.tiny.gguf}:Q4_K_M"
    lines = [update.model_dump(exclude_none=True) for update in client(server).pull(name, stream=True)]
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    downloads = [line for line in lines if line["status"] == "downloading tiny-Q4_K_M.gguf"]
    assert downloads and {line["total"] for line in downloads} == {Q4_SIZE}
    assert downloads[-1]["completed"] == Q4_SIZE and downloads[-1]["digest"].startswith("sha256:")
    assert [line["completed"] for line in downloads] == sorted(line["completed"] for line in downloads)
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert "tiny-q4_k_m" in {model.model for model in client(server).list().models}
    reply = client(server).chat(model=name, messages=[{"role": "user", "content": "Hi"}],
                                options={"num_predict": 2, "temperature": 0})
    assert reply.message.role == "assistant" and reply.done
    assert client(server).show(name).details.quantization_level == "Q4_K_M"


def test_a_pull_without_a_stream_answers_success_at_the_end(server, hub):
    assert client(server).pull(hub.tiny.no_q4_k_m, stream=False).status == "success"
    assert "tiny-q5_k_m" in {model.model for model in client(server).list().models}


def test_a_failed_pull_ends_with_an_error_that_says_what_to_do(server, hub):
    with pytest.raises(ollama.ResponseError, match="only pickled PyTorch weights"):
        list(client(server).pull(hub.tiny.pickles, stream=True))
    with pytest.raises(ollama.ResponseError, match="is gated: accept its conditions") as gated:
        client(server).pull(hub.tiny.gated, stream=False)
    assert gated.value.status_code == 403


def test_a_name_outside_hugging_face_is_refused_with_400(server):
    response = httpx.post(f"{server.base_url}/api/pull", json={"model": "llama3.2"},
                          headers={"Authorization": f"Bearer {server.api_key}"}, timeout=30)
    assert response.status_code == 400
    assert "hf.co/Qwen/Qwen3-0.6B-GGUF:Q4_K_M" in response.json()["error"] and "/models/" in response.json()["error"]
    missing = httpx.post(f"{server.base_url}/api/pull", json={"stream": False},
                         headers={"Authorization": f"Bearer {server.api_key}"}, timeout=30)
    assert missing.status_code == 400 and missing.json() == {"error": "model is required"}


def test_a_members_key_gets_403_in_ollama_s_shape(server, hub):
    member_key = server.create_user("pull-member")
    response = httpx.post(f"{server.base_url}/api/pull", json={"model": hub.tiny.gguf},
                          headers={"Authorization": f"Bearer {member_key}"}, timeout=30)
    assert response.status_code == 403
    assert response.json() == {"error": "This endpoint is for administrators; your API key's user is not one."}


@pytest.mark.parametrize(("method", "path"), [("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy"),
                                              ("DELETE", "/api/delete")])
def test_push_create_copy_and_delete_stay_refused(server, method, path):
    response = httpx.request(method, f"{server.base_url}{path}", json={"model": "tiny"},
                             headers={"Authorization": f"Bearer {server.api_key}"}, timeout=30)
    assert response.status_code == 400 and "model library page" in response.json()["error"]
