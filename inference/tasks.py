"""Celery tasks: thin entry points over the runner and services, and the worker's life cycle.

A worker runs Celery's thread pool with HEARTH_WORKER_SLOTS threads: each `generation_run` task takes the queued
job whose turn it is and hands it to the process's engine, which decodes every slot together. At start the
worker begins to beat (presence, lease renewal, the reaper); on SIGTERM it hands its jobs back to the queue before
Celery's warm shutdown waits for the tasks, so another worker continues their streams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from inference.presence import CONVERTER, PULLER, WORKER, Heartbeat

log = logging.getLogger(__name__)
GENERATION_QUEUE = "generation"  # generation_run: a generation worker's slots
CONVERSION_QUEUE = "conversions"  # model_convert: a converter (`celery worker -Q conversions -c 1`)
PULL_QUEUE = "pulls"  # model_pull: a puller (`celery worker -Q pulls -c 1`)
OUTAGE_RETRY_SECONDS = 3
_heartbeats: dict[str, Heartbeat] = {}


@shared_task(bind=True, name="inference.generation_run", acks_late=True, ignore_result=True, max_retries=None)
def generation_run(self, job_id: str) -> None:
    from inference.outages import outage_seen
    from inference.runner import run_next_job, worker_name

    try:
        run_next_job(worker_name())
    except Exception as error:
        if outage_seen(error) is None:
            raise
        # The database or Redis is briefly gone before a job could be claimed: try again shortly.
        raise self.retry(countdown=OUTAGE_RETRY_SECONDS) from error


@shared_task(name="inference.model_convert", acks_late=True, ignore_result=True)
def model_convert(conversion_id: int) -> None:
    from django.db import close_old_connections

    from inference.conversions import conversion_run
    from inference.runner import worker_name

    close_old_connections()
    conversion_run(conversion_id, worker_name())


@shared_task(name="inference.model_pull", acks_late=True, ignore_result=True)
def model_pull(pull_id: int) -> None:
    from django.db import close_old_connections

    from inference.pulls import pull_run
    from inference.runner import worker_name

    close_old_connections()
    try:
        pull_run(pull_id, worker_name())
    finally:
        close_old_connections()


def start_worker_heartbeat(hostname: str) -> Heartbeat:
    """Begin to beat (presence, leases, the reaper) and wake the jobs left queued without a message."""
    from inference.leases import wake_queued

    return _begin_beat(hostname, WORKER, lambda _name: wake_queued(), "queued job(s) sent to the workers again")


def start_converter_heartbeat(hostname: str) -> Heartbeat:
    """A converter beats as a converter (it never counts as a generation worker, holds no lease) and starts over
    the conversions a converter that died left running."""
    from inference.conversions import resume_orphaned_conversions

    return _begin_beat(hostname, CONVERTER, resume_orphaned_conversions,
                       "conversion(s) left by a converter that died started over")


def start_puller_heartbeat(hostname: str) -> Heartbeat:
    """A puller beats as a puller (no lease, no job) and resumes the pulls a puller that died left running."""
    from inference.pulls import resume_orphaned_pulls

    return _begin_beat(hostname, PULLER, resume_orphaned_pulls, "pull(s) left by a puller that died resumed")


def _begin_beat(hostname: str, role: str, catch_up: Callable[[str], int], caught_up: str) -> Heartbeat:
    """Name this process, beat in its role (a generation worker also renews its leases and reaps), then
    `catch_up(name)` on what was left undone while no such process ran; its count is logged as `caught_up`."""
    from django.db import close_old_connections

    from inference.runner import name_worker

    name = name_worker(hostname)
    beat = _heartbeats[name] = (Heartbeat(name, leases=True) if role == WORKER
                                else Heartbeat(name, lambda: [], role=role))
    beat.start()
    try:
        count = catch_up(name)
        if count:
            log.warning("%d %s", count, caught_up)
    except Exception:
        log.warning("could not catch up on what was left undone (%s)", caught_up, exc_info=True)
    finally:
        close_old_connections()
    return beat


@worker_ready.connect
def _start_heartbeat(sender, **_kwargs) -> None:
    """A worker on the generation queue beats as a generation worker; one on the conversions queue, as a converter;
    one on the pulls queue alone, as a puller. (The embedded mode's worker starts its own beat: inference/embedded.py.)
    """
    queues = {queue.name for queue in sender.task_consumer.queues}
    if GENERATION_QUEUE in queues:
        start_worker_heartbeat(sender.hostname)
    elif CONVERSION_QUEUE in queues:
        start_converter_heartbeat(sender.hostname)
    elif PULL_QUEUE in queues:
        start_puller_heartbeat(sender.hostname)


@worker_shutting_down.connect
def _hand_back_jobs(sender=None, **_kwargs) -> None:
    from inference.runner import shut_down, worker_name

    handed = shut_down(worker_name())
    if handed:
        log.warning("shutting down: %d job(s) handed back to the queue", handed)


@worker_shutdown.connect
def _stop_heartbeat(sender, **_kwargs) -> None:
    for name in list(_heartbeats):
        _heartbeats.pop(name).stop()
