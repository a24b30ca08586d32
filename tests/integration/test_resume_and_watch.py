"""Streams that survive their connection, and jobs that end when nobody follows them, on a real embedded server.

- An SSE client that drops mid-stream comes back with `Last-Event-ID` (or `starting_after`) and gets every later
  chunk of the same job: joined, the two halves are the whole answer, no gap, no duplicate.
- A job whose page and socket are gone is stopped by its worker after HEARTH_WATCH_SECONDS; an SSE client that
  hangs up leaves its job HEARTH_RESUME_GRACE_SECONDS to come back.
- /metrics tells Prometheus what happened (for an administrator or the metrics token only).
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.factories import TINY_GGUF_EOS_ID, TINY_GGUF_IM_END_ID
from tests.integration.chat_client import ChatSocket, login
from tests.integration.sse_client import events, id_key, text_of
from tests.servers import start_embedded

NO_END = {str(TINY_GGUF_EOS_ID): -100, str(TINY_GGUF_IM_END_ID): -100}
METRICS_TOKEN = "metrics-token-for-the-tests"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_gguf, demo_gguf):
    hearth = start_embedded(tmp_path_factory.mktemp("resume"), {"tiny": tiny_gguf, "demo": demo_gguf},
                            HEARTH_WATCH_SECONDS="4", HEARTH_RESUME_GRACE_SECONDS="3",
                            HEARTH_STREAM_INTERVAL_MS="0", HEARTH_METRICS_TOKEN=METRICS_TOKEN)
    yield hearth
    hearth.stop()


def auth(server) -> dict:
    return {"Authorization": f"Bearer {server.api_key}"}


def first_part(server, path: str, body: dict, n: int):
    """The first n SSE events of a new stream, then the connection dropped; the job's id."""
    received = []
    with httpx.stream("POST", f"{server.base_url}{path}", json={**body, "stream": True}, headers=auth(server),
                      timeout=60) as response:
        job = response.headers["x-hearth-job"]
        for event in events(response):
            received.append(event)
            if len(received) >= n:
                break
    return job, received


@pytest.mark.parametrize("how", ["header", "query"])
def test_a_dropped_stream_resumes_after_its_last_event_id_with_no_gap_and_no_duplicate(server, how):
    body = {"model": "demo", "prompt": "The river", "max_tokens": 40, "temperature": 0, "logit_bias": NO_END,
            "stream_options": {"include_usage": True}}
    job, first = first_part(server, "/v1/completions", body, 6)
    last_id = [e.id for e in first if e.id][-1]
    url = f"{server.base_url}/v1/completions/cmpl-{job.replace('-', '')}"
    params, headers = {"stream": "true"}, dict(auth(server))
    if how == "header":
        headers["Last-Event-ID"] = last_id
    else:
        params["starting_after"] = last_id
    with httpx.stream("GET", url, params=params, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        rest = list(events(response))
    whole = httpx.get(url, headers=auth(server), timeout=60).json()
    ids = [id_key(e.id) for e in first + rest if e.id]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert text_of(first) + text_of(rest) == whole["choices"][0]["text"]
    assert whole["usage"]["completion_tokens"] == 40
    usage_chunks = [e.data for e in rest if isinstance(e.data, dict) and e.data.get("usage")]
    assert len(usage_chunks) == 1 and rest[-1].done


def test_a_chat_stream_resumes_the_same_way(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, "temperature": 0,
            "logit_bias": NO_END}
    job, first = first_part(server, "/v1/chat/completions", body, 4)
    url = f"{server.base_url}/v1/chat/completions/chatcmpl-{job.replace('-', '')}"
    with httpx.stream("GET", url, params={"stream": "true"}, timeout=60,
                      headers={**auth(server), "Last-Event-ID": [e.id for e in first if e.id][-1]}) as response:
        rest = list(events(response))
    whole = httpx.get(url, headers=auth(server), timeout=60).json()
    assert whole["object"] == "chat.completion"
    assert text_of(first) + text_of(rest) == whole["choices"][0]["message"]["content"]
    ids = [c.get("id") for c in (e.data for e in first + rest) if isinstance(c, dict)]
    assert set(ids) == {whole["id"]}


def test_nobody_elses_completion_can_be_resumed(server):
    job, _ = first_part(server, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 3}, 1)
    other_key = server.create_user("outsider")
    reply = httpx.get(f"{server.base_url}/v1/completions/cmpl-{job.replace('-', '')}", timeout=30,
                      headers={"Authorization": f"Bearer {other_key}"})
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{server.base_url}/v1/completions/cmpl-nothing", headers=auth(server),
                     timeout=30).status_code == 404


def job_status(server, job_id: str, wanted: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = server.job_statuses([job_id])[job_id]
        if status == wanted:
            break
        time.sleep(0.2)
    return status


def test_a_job_whose_page_and_socket_are_gone_is_stopped(server):
    chat = ChatSocket(server, login(server))
    chat.send(type="complete", model="demo", prompt="Tell me everything.",
              sampling={"temperature": 0, "max_tokens": 3000})
    job = chat.receive()["job"]
    chat.close()  # the tab is closed: nobody follows the reply any more
    assert server.job_statuses([job])[job] in ("queued", "running")
    assert job_status(server, job, "cancelled", timeout=30) == "cancelled"


def test_a_reloaded_page_picks_its_reply_up_again_and_the_job_goes_on(server):
    chat = ChatSocket(server, login(server))
    chat.send(type="complete", model="demo", prompt="Count slowly.", sampling={"temperature": 0, "max_tokens": 150})
    job = chat.receive()["job"]
    chat.close()
    time.sleep(1.5)
    again = ChatSocket(server, login(server))  # the page, reloaded, resumes the stream
    again.send(type="resume", job=job, after=0)
    messages = again.events_until_terminal(timeout=120)
    again.close()
    assert messages[-1]["event"]["kind"] == "done"
    assert server.job_statuses([job])[job] == "succeeded"


def test_an_sse_client_that_hangs_up_has_a_grace_to_come_back_then_its_job_stops(server):
    body = {"model": "demo", "prompt": "A very long tale", "max_tokens": 3000, "temperature": 0,
            "logit_bias": {"1": -100, "106": -100, "212": -100}}
    job, _ = first_part(server, "/v1/completions", body, 3)
    time.sleep(1)
    assert server.job_statuses([job])[job] == "running"  # still in its grace
    assert job_status(server, job, "cancelled", timeout=30) == "cancelled"


def test_metrics_count_what_happened_for_prometheus(server):
    assert httpx.get(f"{server.base_url}/metrics", timeout=30).status_code == 401
    httpx.post(f"{server.base_url}/v1/completions", json={"model": "tiny", "prompt": "count", "max_tokens": 5},
               headers=auth(server), timeout=60)
    reply = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
                      timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.text
    assert 'hearth_jobs_finished_total{backend="llamacpp",model="tiny",status="succeeded"}' in text
    assert "hearth_time_to_first_token_seconds_bucket" in text and "hearth_queue_seconds_count" in text
    assert 'hearth_completion_tokens_total{backend="llamacpp",model="tiny"}' in text
    assert "hearth_workers_alive 1.0" in text
    session = login(server)
    assert session.get("/metrics").status_code == 200  # an administrator's session reads them too
