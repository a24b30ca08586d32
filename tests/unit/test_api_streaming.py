"""The SSE writer over the real in-process relay: a failure after the stream began is an error event, then [DONE]."""

from __future__ import annotations

import asyncio
import json
import uuid

from api.streaming import JobEvents, sse_response
from inference.relay import InProcessRelay, get_relay


def render(_index, event, _outcome):
    return [{"object": "chunk", "text": event.get("text", "")}] if event["kind"] == "token" else []


async def read_stream(job_events: list[dict]) -> list[str]:
    relay = get_relay()
    assert isinstance(relay, InProcessRelay)
    job_id = str(uuid.uuid4())
    relay.claim(job_id, "test-worker")
    publisher = relay.publisher(job_id, "test-worker")
    for event in job_events:
        publisher.publish(event)
    events = JobEvents(job_id)
    await events.wait_first()
    response = sse_response(events, render)
    body = "".join([part.decode() if isinstance(part, bytes) else part async for part in response.streaming_content])
    return [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]


def test_it_ends_a_stream_that_fails_midway_with_an_error_event_then_done():
    lines = asyncio.run(read_stream([
        {"kind": "started", "prompt_tokens": 3},
        {"kind": "token", "text": "Hel"},
        {"kind": "error", "code": "backend_error", "status": 500, "message": "The llamacpp backend failed."},
    ]))
    assert json.loads(lines[0]) == {"object": "chunk", "text": "Hel"}
    error = json.loads(lines[1])["error"]
    assert error == {"message": "The llamacpp backend failed.", "type": "server_error", "param": None,
                     "code": "backend_error"}
    assert lines[2:] == ["[DONE]"]


def test_it_ends_a_finished_stream_with_done():
    lines = asyncio.run(read_stream([
        {"kind": "started", "prompt_tokens": 3},
        {"kind": "token", "text": "Hi"},
        {"kind": "done", "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 1},
    ]))
    assert [json.loads(line) for line in lines[:-1]] == [{"object": "chunk", "text": "Hi"}]
    assert lines[-1] == "[DONE]"
