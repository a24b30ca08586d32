"""The whole stack under a team's load: 32 concurrent jobs of two users, mixed lengths, random cancels. Every job
ends, every stream is whole (no token lost or repeated), and afterwards no slot holds a sequence and the engine
holds no job: nothing leaks."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from tests.factories import TINY_GGUF_EOS_ID, TINY_GGUF_IM_END_ID
from tests.integration.sse_client import events, id_key, text_of
from tests.servers import start_embedded

JOBS = 32


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_gguf):
    hearth = start_embedded(tmp_path_factory.mktemp("stress"), {"tiny": tiny_gguf}, HEARTH_WORKER_SLOTS="4",
                            HEARTH_MAX_QUEUED="64", HEARTH_PREFILL_CHUNK_TOKENS="32")
    hearth.teammate_key = hearth.create_user("teammate")
    yield hearth
    hearth.stop()


def test_thirty_two_concurrent_jobs_with_random_cancels_all_end_whole(server):
    rng = random.Random(7)
    plans = [{"user": server.api_key if i % 2 else server.teammate_key,
              "prompt": "word " * rng.randint(1, 120),
              "max_tokens": rng.choice([4, 16, 48, 96]),
              "cancel_after": rng.choice([None, None, None, 3, 10])} for i in range(JOBS)]
    results: list[dict] = [{} for _ in plans]

    def run(index: int, plan: dict) -> None:
        body = {"model": "tiny", "prompt": plan["prompt"], "max_tokens": plan["max_tokens"], "temperature": 0,
                "stream": True, "logit_bias": {str(TINY_GGUF_EOS_ID): -100, str(TINY_GGUF_IM_END_ID): -100}}
        received = []
        try:
            with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=300,
                              headers={"Authorization": f"Bearer {plan['user']}"}) as response:
                results[index]["status"] = response.status_code
                results[index]["job"] = response.headers.get("x-hearth-job")
                for event in events(response):
                    received.append(event)
                    if plan["cancel_after"] and len(received) >= plan["cancel_after"]:
                        break  # hang up: the job is cancelled
        except httpx.HTTPError as error:
            results[index]["error"] = repr(error)
        results[index]["events"] = received

    threads = [threading.Thread(target=run, args=(i, plan)) for i, plan in enumerate(plans)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert all(r.get("status") == 200 for r in results), [r.get("status") or r.get("error") for r in results]
    for plan, result in zip(plans, results, strict=True):
        received = result["events"]
        ids = [id_key(e.id) for e in received if e.id is not None]
        assert ids == sorted(ids) and len(ids) == len(set(ids))  # nothing repeated, nothing out of order
        if plan["cancel_after"] is None:
            assert received[-1].done
            chunks = [e.data for e in received if isinstance(e.data, dict)]
            finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
            assert finishes == ["length"]
            whole = httpx.get(f"{server.base_url}/v1/completions/cmpl-{result['job'].replace('-', '')}",
                              headers={"Authorization": f"Bearer {plan['user']}"}, timeout=60).json()
            assert text_of(received) == whole["choices"][0]["text"]  # every token arrived, once
            assert whole["usage"]["completion_tokens"] == plan["max_tokens"]
    # Every job ended: the hung-up ones cancelled (or finished first), the rest succeeded.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = server.job_statuses([r["job"] for r in results])
        if all(s in ("succeeded", "cancelled") for s in statuses.values()):
            break
        time.sleep(0.5)
    assert all(s in ("succeeded", "cancelled") for s in statuses.values()), statuses
    for plan, result in zip(plans, results, strict=True):
        if plan["cancel_after"] is None:
            assert statuses[result["job"]] == "succeeded"
    deadline = time.monotonic() + 10  # the heartbeat reports the engine every beat
    while time.monotonic() < deadline:
        engine = httpx.get(f"{server.base_url}/health", timeout=30).json()["engine"]
        if engine and all(model["running"] == 0 and model["waiting"] == 0 for model in engine):
            break
        time.sleep(0.5)
    assert engine and all(model["running"] == 0 and model["waiting"] == 0 for model in engine), engine
    assert all(model["slots"] == 4 for model in engine)
