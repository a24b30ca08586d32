"""Who runs which job: fair claims, leases renewed by the heartbeat, and the reaper for jobs whose owner is gone.

Personas: alice floods the queue, bob asks once; worker "w1" is alive, "ghost" was killed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from inference import leases
from inference.models import GenerationJob, JobStatus
from inference.presence import get_presence
from inference.relay import get_relay
from inference.services import model_import
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tiny(tmp_path):
    return model_import(factories.build_tiny_gguf(tmp_path / "tiny.gguf"), name="tiny")


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice", password="alice-password")


@pytest.fixture
def bob():
    return get_user_model().objects.create_user("bob", password="bob-password")


@pytest.fixture
def w1():
    get_presence().beat("w1")
    yield "w1"
    get_presence().leave("w1")


@pytest.fixture
def reaper():
    return leases.Reaper()


def queue(owner, model, n: int = 1) -> list[GenerationJob]:
    return [GenerationJob.objects.create(owner=owner, model=model, model_name=model.name, request={"prompt": "x"})
            for _ in range(n)]


def test_a_claim_takes_the_oldest_job_and_leases_it_to_the_worker(alice, tiny, w1):
    first, _second = queue(alice, tiny, 2)
    claimed = leases.claim_next(w1)
    assert claimed.id == first.id
    assert claimed.status == JobStatus.RUNNING and claimed.worker == w1
    assert claimed.lease_expires_at > timezone.now()


def test_users_take_turns_so_a_burst_does_not_push_a_teammate_back(alice, bob, tiny, w1):
    burst = queue(alice, tiny, 3)
    (teammate,) = queue(bob, tiny)
    order = [leases.claim_next(w1).id for _ in range(4)]
    assert order == [burst[0].id, teammate.id, burst[1].id, burst[2].id]


def test_the_queue_positions_follow_the_order_of_the_claims(alice, bob, tiny):
    burst = queue(alice, tiny, 3)
    (teammate,) = queue(bob, tiny)
    positions = leases.queue_positions()
    assert [positions[str(j.id)] for j in [burst[0], teammate, burst[1], burst[2]]] == [1, 2, 3, 4]


def test_nothing_is_claimed_when_nothing_waits(w1):
    assert leases.claim_next(w1) is None


def test_renewing_extends_the_lease_and_names_the_jobs_that_are_no_longer_the_workers(alice, tiny, w1):
    a, b = queue(alice, tiny, 2)
    leases.claim_next(w1)
    leases.claim_next(w1)
    GenerationJob.objects.filter(id=b.id).update(worker="someone-else")
    before = GenerationJob.objects.get(id=a.id).lease_expires_at
    lost = leases.renew(w1, [str(a.id), str(b.id)])
    assert lost == {str(b.id)}
    assert GenerationJob.objects.get(id=a.id).lease_expires_at >= before


def lapse(job: GenerationJob, worker: str) -> None:
    GenerationJob.objects.filter(id=job.id).update(status=JobStatus.RUNNING, worker=worker,
                                                   lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_a_job_whose_worker_died_goes_back_to_the_queue_for_a_live_worker(alice, tiny, w1, reaper):
    (job,) = queue(alice, tiny)
    lapse(job, "ghost")
    assert reaper.run() == (1, 0)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.worker == "" and job.takeovers == 1


def test_a_lapsed_lease_of_a_worker_still_beating_is_left_alone(alice, tiny, w1, reaper):
    (job,) = queue(alice, tiny)
    lapse(job, w1)
    assert reaper.run() == (0, 0)
    assert GenerationJob.objects.get(id=job.id).status == JobStatus.RUNNING


def test_with_no_live_worker_a_running_job_fails_with_an_error_event_that_says_why(alice, tiny, reaper):
    (job,) = queue(alice, tiny)
    lapse(job, "ghost")
    get_relay().claim(str(job.id), "ghost")
    get_relay().publisher(str(job.id), "ghost").publish({"kind": "started", "prompt_tokens": 3})
    assert reaper.run() == (0, 1)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error_code == "worker_lost"
    events = get_relay().read(str(job.id))
    assert [index for index, _ in events] == [1, 2]
    assert events[-1][1]["kind"] == "error" and events[-1][1]["status"] == 503
    assert "no other worker" in events[-1][1]["message"]


def test_a_job_taken_over_too_often_fails_instead_of_looping(alice, tiny, w1, reaper):
    (job,) = queue(alice, tiny)
    lapse(job, "ghost")
    GenerationJob.objects.filter(id=job.id).update(takeovers=leases.MAX_TAKEOVERS)
    assert reaper.run() == (0, 1)
    assert "stopped" in GenerationJob.objects.get(id=job.id).error_text


def test_queued_jobs_fail_once_no_worker_has_been_alive_for_a_lease(alice, tiny, reaper, settings):
    settings.HEARTH_LEASE_SECONDS = 0
    (job,) = queue(alice, tiny)
    reaper.run()
    reaper.run()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error_code == "worker_lost"
    assert get_relay().read(str(job.id))[-1][1]["kind"] == "error"


def test_queued_jobs_wait_while_a_worker_is_alive(alice, tiny, w1, reaper, settings):
    settings.HEARTH_LEASE_SECONDS = 0
    (job,) = queue(alice, tiny)
    reaper.run()
    assert GenerationJob.objects.get(id=job.id).status == JobStatus.QUEUED


def test_a_worker_shutting_down_hands_its_job_back(alice, tiny, w1):
    (job,) = queue(alice, tiny)
    leases.claim_next(w1)
    assert leases.hand_back(str(job.id), w1)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.worker == ""
