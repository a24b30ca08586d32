"""Production mode for real: daphne, a separate `celery worker` process over Redis, Redis Streams relay,
PostgreSQL. The same API, the same answers as embedded mode."""

from __future__ import annotations

import re
import signal
import time

import httpx
import openai
import psycopg
import pytest

from tests.conftest import DEMO_EOG, openai_client
from tests.integration.chat_client import login
from tests.servers import POSTGRES_URL

pytestmark = pytest.mark.production


def job_rows(server) -> list[tuple]:
    with psycopg.connect(f"{POSTGRES_URL}/{server.postgres_database}") as connection:
        return connection.execute(
            "SELECT status, completion_tokens, model_name FROM inference_generationjob ORDER BY created_at"
        ).fetchall()


def test_it_reports_production_mode_with_a_separate_worker(production_server):
    health = httpx.get(f"{production_server.base_url}/health", timeout=30).json()
    assert health["mode"] == "production"
    assert health["broker"] == "ok" and health["database"] == "ok"
    assert health["workers"]["alive"] == 1
    assert health["workers"]["names"][0].startswith("worker0-")


def test_it_streams_and_answers_through_the_celery_worker(production_server):
    client = openai_client(production_server)
    arguments = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 10,
                 "temperature": 0}
    whole = client.chat.completions.create(**arguments)
    chunks = list(client.chat.completions.create(**arguments, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 10
    assert job_rows(production_server)[-1][:2] == ("succeeded", 10)


def test_it_refuses_an_over_long_prompt_with_400_from_the_worker(production_server):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(production_server).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "the " * 2000}])
    assert caught.value.body["code"] == "context_length_exceeded"


def test_an_sse_client_that_disconnects_has_its_job_stopped_after_the_resume_grace(production_server):
    body = {"model": "demo", "messages": [{"role": "user", "content": "Write a long story."}], "stream": True,
            "max_tokens": 4000, "logit_bias": DEMO_EOG}
    headers = {"Authorization": f"Bearer {production_server.api_key}"}
    with httpx.stream("POST", f"{production_server.base_url}/v1/chat/completions", json=body, headers=headers,
                      timeout=120) as response:
        chunks = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                chunks += 1
            if chunks >= 4:
                break
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, tokens, model = job_rows(production_server)[-1]
        if status == "cancelled":
            break
        time.sleep(0.1)
    assert (status, model) == ("cancelled", "demo")
    assert tokens < 1000  # stopped HEARTH_RESUME_GRACE_SECONDS after the hang-up, far before its 4000
    # The worker is free again at once.
    quick = openai_client(production_server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "next"}], max_tokens=2)
    assert quick.usage.completion_tokens == 2


def test_it_answers_503_once_no_worker_is_alive(production_server):
    worker = next(p for p in production_server.processes if "celery" in " ".join(map(str, p.args)))
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    production_server.processes.remove(worker)
    try:
        deadline = time.monotonic() + 20
        while httpx.get(f"{production_server.base_url}/health", timeout=30).json()["workers"]["alive"]:
            assert time.monotonic() < deadline, "the dead worker's heartbeat never expired"
            time.sleep(0.5)
        with pytest.raises(openai.InternalServerError) as caught:
            openai_client(production_server).chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "anyone?"}], max_tokens=2)
        assert caught.value.status_code == 503
        assert "worker" in caught.value.body["message"]
    finally:  # the server is shared by the whole session: the tests after this one get a worker again
        production_server.start_celery_worker("worker-revived")
        production_server.wait_healthy(workers=1)


def conversion_rows(server) -> list[tuple]:
    with psycopg.connect(f"{POSTGRES_URL}/{server.postgres_database}") as connection:
        return connection.execute(
            "SELECT status, worker, error_text FROM inference_modelconversion ORDER BY created_at").fetchall()


def test_a_conversion_waits_for_a_converter_and_runs_there_never_on_a_generation_worker(production_server, tiny_hf):
    production_server.manage("import_model", str(tiny_hf), "--name", "tiny-hf-to-convert")
    admin = login(production_server)
    page = admin.get("/models/tiny-hf-to-convert/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    health = admin.get("/health").json()
    assert health["converters"] == {"alive": 0, "names": []}

    # No converter yet: the admin is told it waits, and the generation worker leaves it alone.
    answer = admin.post("/models/tiny-hf-to-convert/convert/", data={
        "target": "gguf", "type": "f16", "csrfmiddlewaretoken": token},
        headers={"Referer": f"{production_server.base_url}/models/tiny-hf-to-convert/"})
    assert "No converter is running" in answer.text
    time.sleep(3)
    assert conversion_rows(production_server)[-1][:2] == ("queued", "")

    converter = production_server.start_converter()
    try:
        deadline = time.monotonic() + 120
        while conversion_rows(production_server)[-1][0] in ("queued", "running"):
            assert time.monotonic() < deadline, production_server.log_tail()
            time.sleep(0.5)
        status, worker, error = conversion_rows(production_server)[-1]
        assert (status, error) == ("succeeded", "")
        assert worker.startswith(f"converter-{production_server.port}@")
        converters = admin.get("/health").json()["converters"]
        assert converters["alive"] == 1 and converters["names"][0].startswith("converter-")
        assert admin.get("/health").json()["workers"]["alive"] == 1  # a converter is no generation worker
        # The result joins the library and the generation worker serves it.
        reply = openai_client(production_server).chat.completions.create(
            model="tiny-hf-to-convert-f16", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert reply.usage.completion_tokens == 2
    finally:
        converter.terminate()
        converter.wait(timeout=30)
        production_server.processes.remove(converter)
