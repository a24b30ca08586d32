"""Model access on a real embedded server, end to end: Alice (research group) is answered by research-tiny; Bob
(support group) and Olga (no group) are told it does not exist, word for word as for a name the library lacks,
by the OpenAI and Ollama clients and by the chat socket. tests/integration/test_team_access.py has the full matrix."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from tests.conftest import openai_client
from tests.integration.chat_client import ChatSocket, login
from tests.team import PASSWORD, close_research_model, start_team_server

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def team(tmp_path_factory, tiny_gguf):
    team = start_team_server(tmp_path_factory.mktemp("team"), tiny_gguf)
    close_research_model(team)
    yield team
    team.server.stop()


def post(team, who: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{team.server.base_url}{path}", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {team.keys[who]}"})


def test_alice_is_answered_by_her_groups_model_and_bob_is_told_it_does_not_exist(team):
    reply = openai_client(team.server, team.keys["alice"]).chat.completions.create(
        model="research-tiny", messages=HELLO, max_tokens=4, temperature=0)
    assert reply.model == "research-tiny" and reply.choices[0].finish_reason in ("length", "stop")
    with pytest.raises(openai.NotFoundError) as refused:
        openai_client(team.server, team.keys["bob"]).chat.completions.create(model="research-tiny", messages=HELLO)
    assert refused.value.code == "model_not_found"
    for who in ("bob", "olga"):
        for path, body in (("/v1/chat/completions", {"messages": HELLO}), ("/api/chat", {"messages": HELLO}),
                           ("/v1/messages", {"messages": HELLO, "max_tokens": 4})):
            forbidden = post(team, who, path, {"model": "research-tiny", **body})
            unknown = post(team, who, path, {"model": "research-gone", **body})
            assert forbidden.status_code == unknown.status_code == 404
            assert forbidden.text.replace("research-tiny", "research-gone") == unknown.text


def test_the_ollama_client_lists_and_shows_each_person_only_their_models(team):
    def client(who: str) -> ollama.Client:
        return ollama.Client(host=team.server.base_url, headers={"Authorization": f"Bearer {team.keys[who]}"},
                             timeout=60)

    assert {m.model for m in client("alice").list().models} == {"open-tiny", "research-tiny"}
    assert {m.model for m in client("bob").list().models} == {"open-tiny"}
    assert {m.model for m in client("admin").list().models} == {"open-tiny", "research-tiny"}
    client("alice").generate(model="research-tiny", prompt="Hi", options={"num_predict": 2})  # now loaded
    assert "research-tiny" in {m.model for m in client("alice").ps().models}
    assert "research-tiny" not in {m.model for m in client("bob").ps().models}
    with pytest.raises(ollama.ResponseError) as refused:
        client("bob").show("research-tiny")
    assert refused.value.status_code == 404


def test_health_names_a_loaded_model_only_to_those_who_may_know_it(team):
    post(team, "alice", "/v1/chat/completions", {"model": "research-tiny", "messages": HELLO, "max_tokens": 2})

    def names(client) -> list[str]:
        return [entry.get("model", "?").split(" (")[0] for entry in client.get("/health").json()["engine"]]

    loaded = names(login(team.server))  # an admin's
    assert "research-tiny" in loaded
    hidden = ["?" if name == "research-tiny" else name for name in loaded]
    assert names(httpx.Client(base_url=team.server.base_url, timeout=30)) == hidden  # anyone
    assert names(login(team.server, "bob", PASSWORD)) == hidden
    assert names(login(team.server, "alice", PASSWORD)) == loaded


def test_the_chat_socket_streams_alices_reply_and_tells_bob_the_model_does_not_exist(team):
    bob = ChatSocket(team.server, login(team.server, "bob", PASSWORD))
    try:
        bob.send(type="send", conversation=None, model="research-tiny", content="Hello")
        forbidden = bob.receive()
        bob.send(type="send", conversation=None, model="research-gone", content="Hello")
        assert forbidden == bob.receive() and forbidden["code"] == "model_not_found"
    finally:
        bob.close()
    alice = ChatSocket(team.server, login(team.server, "alice", PASSWORD))
    try:
        alice.send(type="send", conversation=None, model="research-tiny", content="Hello",
                   sampling={"max_tokens": 4})
        assert alice.receive()["type"] == "accepted"
        assert alice.events_until_terminal()[-1]["event"]["kind"] == "done"
    finally:
        alice.close()
