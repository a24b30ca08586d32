"""The chat page's websocket on a real embedded server: streamed replies stored as rows, Stop, resume."""

from __future__ import annotations

import sqlite3
import time

import pytest
from websockets.exceptions import ConnectionClosed

from tests.integration.chat_client import ChatSocket, login


def query(server, sql: str, *params):
    with sqlite3.connect(server.data_dir / "hearth.sqlite3", timeout=30) as connection:
        return connection.execute(sql, params).fetchall()


def job_row(server, job_id: str) -> dict:
    status, completion_tokens, started_at = query(
        server, "SELECT status, completion_tokens, started_at FROM inference_generationjob WHERE id = ?",
        job_id.replace("-", ""),
    )[0]
    return {"status": status, "completion_tokens": completion_tokens, "started_at": started_at}


def wait_for_status(server, job_id: str, wanted: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = job_row(server, job_id)
        if row["status"] == wanted:
            return row
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} is {row['status']}, not {wanted}")


@pytest.fixture
def socket(embedded_server):
    chat = ChatSocket(embedded_server, login(embedded_server))
    yield chat
    chat.close()


def test_it_refuses_a_socket_without_a_login(embedded_server):
    from websockets.sync.client import connect

    with pytest.raises((ConnectionClosed, Exception)):
        ws = connect(f"ws://127.0.0.1:{embedded_server.port}/ws/chat/", origin=embedded_server.base_url)
        ws.recv(timeout=10)


def test_it_streams_a_reply_and_stores_the_conversation_as_rows(embedded_server, socket):
    socket.send(type="send", conversation=None, model="tiny", content="Tell me a story")
    accepted = socket.receive()
    assert accepted["type"] == "accepted"
    events = socket.events_until_terminal()
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["event"]["kind"] == "started"
    assert events[-1]["event"]["kind"] == "done"
    streamed = "".join(e["event"].get("text", "") for e in events)
    rows = query(embedded_server, "SELECT role, content FROM webui_message WHERE conversation_id = ? ORDER BY id",
                 accepted["conversation"])
    assert [r[0] for r in rows] == ["user", "assistant"]
    assert rows[0][1] == "Tell me a story"
    deadline = time.monotonic() + 10
    while rows[1][1] != streamed and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = query(embedded_server, "SELECT role, content FROM webui_message WHERE conversation_id = ? ORDER BY id",
                     accepted["conversation"])
    assert rows[1][1] == streamed


def test_it_continues_a_conversation_with_its_history(embedded_server, socket):
    socket.send(type="send", conversation=None, model="tiny", content="First")
    conversation = socket.receive()["conversation"]
    socket.events_until_terminal()
    socket.send(type="send", conversation=conversation, model="tiny", content="Second")
    assert socket.receive()["conversation"] == conversation
    started = socket.events_until_terminal()[0]["event"]
    assert started["kind"] == "started" and started["prompt_tokens"] > 10
    count = query(embedded_server, "SELECT COUNT(*) FROM webui_message WHERE conversation_id = ?", conversation)
    assert count == [(4,)]


def test_it_resumes_after_a_dropped_socket_with_no_gap_and_no_duplicate(embedded_server):
    session = login(embedded_server)
    first = ChatSocket(embedded_server, session)
    first.send(type="send", conversation=None, model="demo", content="Count from one to fifty.")
    job = first.receive()["job"]
    seen = []
    while len(seen) < 4:
        message = first.receive()
        if message["type"] == "event":
            seen.append(message)
    first.close()  # the page loses its connection mid-reply
    second = ChatSocket(embedded_server, session)
    second.send(type="resume", job=job, after=seen[-1]["index"])
    rest = [second.receive()]
    second.send(type="stop", job=job)
    rest += second.events_until_terminal()
    second.close()
    indexes = [m["index"] for m in seen + rest]
    assert indexes == list(range(1, len(indexes) + 1))
    assert rest[-1]["event"]["finish_reason"] == "cancelled"


def test_it_stops_the_worker_within_one_token_and_takes_the_next_job_at_once(embedded_server, socket):
    socket.send(type="send", conversation=None, model="demo", content="Write a very long essay about rivers.")
    job = socket.receive()["job"]
    tokens_seen = 0
    while tokens_seen < 3:
        message = socket.receive(timeout=120)
        if message["type"] == "event" and message["event"]["kind"] == "token":
            tokens_seen += 1
    socket.send(type="stop", job=job)
    stopped_at = time.monotonic()
    events = socket.events_until_terminal()
    assert events[-1]["event"]["kind"] == "done"
    assert events[-1]["event"]["finish_reason"] == "cancelled"
    row = wait_for_status(embedded_server, job, "cancelled")
    tokens_after_stop = row["completion_tokens"] - tokens_seen - sum(
        1 for e in events if e["event"]["kind"] == "token")
    assert tokens_after_stop <= 1
    socket.send(type="send", conversation=None, model="tiny", content="Next one")
    next_job = socket.receive()["job"]
    first = socket.receive(timeout=60)
    while first["type"] == "queue":  # its place in line, until a worker takes it
        first = socket.receive(timeout=60)
    # The worker claimed the next job at once (its first event came soon after Stop), however long it then ran.
    assert (first["type"], first["event"]["kind"]) == ("event", "started")
    assert time.monotonic() - stopped_at < 10
    socket.events_until_terminal()
    assert job_row(embedded_server, next_job)["status"] == "succeeded"


def thread_rows(server, conversation: int):
    return query(server, "SELECT id, parent_id, role, content, job_id FROM webui_message WHERE conversation_id = ?"
                         " ORDER BY id", conversation)


def test_regenerate_and_edit_add_versions_and_keep_the_old_ones(embedded_server, socket):
    socket.send(type="send", conversation=None, model="tiny", content="Name a colour",
                sampling={"temperature": 0.9, "max_tokens": 8})
    accepted = socket.receive()
    conversation, first_reply = accepted["conversation"], accepted["message"]
    socket.events_until_terminal()
    socket.send(type="regenerate", message=first_reply, model="tiny")
    regenerated = socket.receive()
    assert regenerated["type"] == "accepted"
    assert regenerated["versions"] == {"index": 2, "count": 2, "prev": first_reply, "next": None}
    events = socket.events_until_terminal()
    assert events[-1]["event"]["completion_tokens"] <= 8  # the conversation's max_tokens holds
    socket.send(type="edit", message=accepted["user_message"], content="Name a fruit", model="tiny")
    edited = socket.receive()
    assert edited["versions"]["index"] == 2 and edited["versions"]["count"] == 2
    socket.events_until_terminal()
    rows = {r[0]: r for r in thread_rows(embedded_server, conversation)}
    assert len(rows) == 5  # nothing was overwritten
    assert rows[regenerated["message"]][1] == accepted["user_message"]  # a sibling of the first reply
    assert rows[edited["user_message"]][1] is None and rows[edited["user_message"]][3] == "Name a fruit"
    assert rows[edited["message"]][1] == edited["user_message"]
    leaf = query(embedded_server, "SELECT leaf_id, sampling FROM webui_conversation WHERE id = ?", conversation)[0]
    assert leaf[0] == edited["message"]
    assert '"max_tokens": 8' in leaf[1]


def test_it_refuses_another_users_message_and_bad_settings_with_readable_errors(embedded_server, socket):
    embedded_server.create_user("mallory", "pw-mallory-123")
    mallory = ChatSocket(embedded_server, login(embedded_server, "mallory", "pw-mallory-123"))
    socket.send(type="send", conversation=None, model="tiny", content="mine")
    accepted = socket.receive()
    socket.events_until_terminal()
    mallory.send(type="regenerate", message=accepted["message"], model="tiny")
    assert mallory.receive() == {"type": "error", "code": "not_found", "message": "That message does not exist."}
    mallory.send(type="send", conversation=accepted["conversation"], model="tiny", content="hi")
    assert mallory.receive()["code"] == "not_found"
    mallory.send(type="send", conversation=None, model="tiny", content="hi", sampling={"temperature": 7})
    refused = mallory.receive()
    assert refused["type"] == "error" and "temperature must be between 0 and 2" in refused["message"]
    mallory.close()


def test_the_playground_completes_a_raw_prompt(embedded_server, socket):
    socket.send(type="complete", model="tiny", prompt="Once upon a time", sampling={"max_tokens": 5, "seed": 1})
    accepted = socket.receive()
    assert accepted["type"] == "accepted" and "conversation" not in accepted
    events = socket.events_until_terminal()
    assert events[-1]["event"]["kind"] == "done"
    assert 0 < events[-1]["event"]["completion_tokens"] <= 5
    kind = query(embedded_server, "SELECT kind, request FROM inference_generationjob WHERE id = ?",
                 accepted["job"].replace("-", ""))[0]
    assert kind[0] == "completion" and '"prompt": "Once upon a time"' in kind[1]


def test_a_conversation_longer_than_the_context_leaves_out_the_oldest_turns_and_the_page_says_so(
    embedded_server, socket
):
    long_text = " ".join(["lighthouse"] * 25)  # the tiny model's context is 512 tokens
    socket.send(type="send", conversation=None, model="tiny", content=long_text, system_prompt="Be brief.",
                sampling={"max_tokens": 4})
    conversation = socket.receive()["conversation"]
    socket.events_until_terminal()
    for _ in range(6):
        socket.send(type="send", conversation=conversation, model="tiny", content=long_text,
                    sampling={"max_tokens": 4})
        reply = socket.receive()["message"]
        started = socket.events_until_terminal()[0]["event"]
        assert started["kind"] == "started", started
        if started.get("dropped_messages"):
            break
    assert started["dropped_messages"] >= 1
    assert query(embedded_server, "SELECT dropped_messages FROM webui_message WHERE id = ?", reply) == [
        (started["dropped_messages"],)]
    page = login(embedded_server).get(f"/c/{conversation}/").text
    assert f"{started['dropped_messages']} earlier message(s) were left out" in page
