"""Two requests cannot both take the last tokens of a quota, nor the last slot of an API key's concurrent jobs,
and jobs that end at once are each counted once: threads released at the same instant by a barrier, in a process
of their own, against a real PostgreSQL database (and SQLite, the embedded mode's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import servers

THREADS = 12


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def database(request, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("race")
    extra = {}
    name = ""
    if request.param == "postgresql":
        name = servers.create_postgres_database()
        extra["DATABASE_URL"] = f"{servers.POSTGRES_URL}/{name}"
    env = servers.base_env(data_dir, **extra)
    servers.manage(env, "migrate", "--noinput")
    yield request.param, env
    if name:
        servers.drop_postgres_database(name)


def race(env: dict[str, str], mode: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.integration.quota_race", mode, str(THREADS)], cwd=servers.ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_it_admits_exactly_one_of_many_simultaneous_requests_for_the_last_token(database):
    vendor, env = database
    result = race(env, "quota")
    assert result["vendor"] == vendor
    assert result["admitted"] == 1, result
    assert result["refused"] == ["quota_exceeded"] * (THREADS - 1)
    assert result["jobs"] == 1
    assert result["counter"] == {"used": 999, "reserved": 2 + 8}  # "hello" ≈ 2 tokens + max_tokens 8


def test_it_admits_exactly_one_of_many_simultaneous_requests_for_a_keys_last_concurrent_slot(database):
    vendor, env = database
    result = race(env, "concurrency")
    assert result["admitted"] == 1, result
    assert result["refused"] == ["rate_limit_exceeded"] * (THREADS - 1)
    assert result["jobs"] == 1


def test_jobs_ending_at_once_are_each_counted_once_in_the_quota_and_the_rollups(database):
    vendor, env = database
    result = race(env, "settle")
    assert result["counter"] == {"used": THREADS * 15, "reserved": 0}
    day = {"requests": THREADS, "prompt_tokens": THREADS * 10, "completion_tokens": THREADS * 5, "ttft_3": THREADS,
           "tps_5": THREADS}
    assert result["live"] == [[day], [{"requests": THREADS, "prompt_tokens": THREADS * 10}]]
    assert result["rebuilt"] == result["live"]
