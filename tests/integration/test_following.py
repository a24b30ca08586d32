"""Following a job: a stream whose end was lost (the relay down as the worker published it) still ends, with an
error event that says so; a job still running, or one that ended a moment ago, is waited for."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from inference import following, relay
from inference.models import GenerationJob, JobStatus
from inference.relay import InProcessRelay

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def quick(monkeypatch):
    """One quiet check every 0.3 s instead of every 10 s."""
    monkeypatch.setattr(relay, "SUBSCRIBE_BLOCK_SECONDS", 0.1)
    monkeypatch.setattr(following, "QUIET_CHECK_SECONDS", 0.3)
    in_process = InProcessRelay(ttl_seconds=60)
    monkeypatch.setattr(following, "get_relay", lambda: in_process)
    return in_process


def a_job(status: str, finished_ago: float | None) -> str:
    owner = get_user_model().objects.create_user("ada")
    finished_at = timezone.now() - timedelta(seconds=finished_ago) if finished_ago is not None else None
    return str(GenerationJob.objects.create(owner=owner, model_name="tiny", status=status,
                                            finished_at=finished_at).id)


def events_within(job_id: str, seconds: float) -> tuple[list, bool]:
    """What following the job from event 2 gives within `seconds`, and whether the stream ended by then."""
    events: list = []

    async def gather() -> None:
        async for batch in following.follow(job_id, 2):
            events.extend(batch)

    async def bounded() -> bool:
        try:
            await asyncio.wait_for(gather(), seconds)
        except TimeoutError:
            return False
        return True

    ended = asyncio.run(bounded())
    return events, ended


def publish_without_an_end(in_process: InProcessRelay, job_id: str) -> None:
    in_process.claim(job_id, "worker-a")
    in_process.publisher(job_id, "worker-a").publish_many([{"kind": "started"}, {"kind": "token", "text": "Hi"}])


def test_it_ends_a_stream_whose_job_finished_long_ago_without_its_end(quick):
    job_id = a_job(JobStatus.SUCCEEDED, finished_ago=following.END_GRACE_SECONDS + 5)
    publish_without_an_end(quick, job_id)
    events, ended = events_within(job_id, 10)
    assert ended
    assert events[-1][0] == 3  # numbered after what the follower had
    assert events[-1][1]["kind"] == "error" and events[-1][1]["code"] == "stream_lost"
    assert "succeeded" in events[-1][1]["message"]


@pytest.mark.parametrize("status, finished_ago", [(JobStatus.RUNNING, None), (JobStatus.SUCCEEDED, 1)])
def test_it_keeps_waiting_for_a_running_job_or_one_whose_end_may_still_come(quick, status, finished_ago):
    job_id = a_job(status, finished_ago)
    publish_without_an_end(quick, job_id)
    assert events_within(job_id, 1.2) == ([], False)
