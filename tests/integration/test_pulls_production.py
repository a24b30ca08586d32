"""Pulls in production mode: PostgreSQL, Redis, and a `celery worker -Q pulls` puller process (docker-compose's
`puller`) against the tests' stand-in hub. The puller takes the pull from its queue; killed in the middle of a file,
its pull resumes from the bytes on disk when the next puller starts."""

from __future__ import annotations

import os
import signal
import time

import httpx
import psycopg
import pytest

from tests import servers

pytestmark = pytest.mark.production
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, hub, tiny_gguf):
    if os.environ.get("HEARTH_SKIP_PRODUCTION_TESTS"):
        pytest.skip("HEARTH_SKIP_PRODUCTION_TESTS is set")
    data = tmp_path_factory.mktemp("pull-production")
    server = servers.start_production(data, {"tiny": tiny_gguf}, HF_ENDPOINT=hub.url, HF_HOME=str(data / "hf-home"),
                                      HF_TOKEN="", HF_HUB_OFFLINE="0")
    yield server
    server.stop()
    servers.drop_postgres_database(server.postgres_database)


def start_puller(server, name: str):
    return server.spawn(name, [servers.PYTHON, "-m", "celery", "-A", "config", "worker", "-Q", "pulls",
                               "--concurrency", "1", "--hostname", f"{name}-{server.port}@%h", "--loglevel", "INFO",
                               "--without-mingle", "--without-gossip"])


def pull_row(server) -> dict:
    with psycopg.connect(f"{servers.POSTGRES_URL}/{server.postgres_database}") as connection:
        row = connection.execute("SELECT status, worker, bytes_done, error_text FROM inference_modelpull "
                                 "ORDER BY created_at DESC LIMIT 1").fetchone()
    return dict(zip(("status", "worker", "bytes_done", "error_text"), row, strict=True)) if row else {}


def wait_until(predicate, server, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.3)


def test_a_puller_process_takes_the_pull_and_one_that_dies_is_resumed_by_the_next(server, hub):
    assert httpx.get(f"{server.base_url}/health", timeout=10).json()["pullers"] == {"alive": 0, "names": []}
    first = start_puller(server, "puller")
    wait_until(lambda: httpx.get(f"{server.base_url}/health", timeout=10).json()["pullers"]["alive"] == 1, server)
    hub.hold("tiny-Q4_K_M.gguf", 2_500_000)
    try:
        with httpx.stream("POST", f"{server.base_url}/api/pull", json={"model": f"hf.co/{hub.tiny.gguf}"},
                          headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if '"completed":2097152' in line:  # two MiB on disk, the third held by the hub
                    break
        assert pull_row(server)["worker"].startswith(f"puller-{server.port}@")
        os.killpg(first.pid, signal.SIGKILL)  # the puller dies mid-file, its pull still `running`
        first.wait(timeout=10)
        server.processes.remove(first)
    finally:
        hub.release("tiny-Q4_K_M.gguf")
    assert pull_row(server)["status"] == "running"
    time.sleep(3.5)  # its beat expires (three beats of a second)
    hub.requests.clear()
    start_puller(server, "puller2")
    wait_until(lambda: pull_row(server)["status"] not in ("queued", "running"), server)
    row = pull_row(server)
    assert (row["status"], row["error_text"]) == ("succeeded", ""), server.log_tail()
    assert row["worker"].startswith(f"puller2-{server.port}@")
    assert [seen.range for seen in hub.fetched()] == [f"bytes={2 * MiB}-"]  # resumed from the bytes on disk
    tags = httpx.get(f"{server.base_url}/api/tags", headers={"Authorization": f"Bearer {server.api_key}"},
                     timeout=30).json()
    assert "tiny-q4_k_m" in {model["name"] for model in tags["models"]}
