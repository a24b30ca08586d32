"""Celery tasks: thin entry points over the runner and services."""

from __future__ import annotations

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown

from inference.presence import Heartbeat

_heartbeats: dict[str, Heartbeat] = {}


@shared_task(name="inference.generation_run", acks_late=True, ignore_result=True)
def generation_run(job_id: str) -> None:
    from inference.runner import run_generation_job

    run_generation_job(job_id, hostname=generation_run.request.hostname or "")


@shared_task(name="inference.model_convert", acks_late=True, ignore_result=True)
def model_convert(conversion_id: int) -> None:
    from django.db import close_old_connections

    from inference.conversions import conversion_run

    close_old_connections()
    conversion_run(conversion_id)


@worker_ready.connect
def _start_heartbeat(sender, **_kwargs) -> None:
    hostname = sender.hostname
    _heartbeats[hostname] = Heartbeat(hostname)
    _heartbeats[hostname].start()


@worker_shutdown.connect
def _stop_heartbeat(sender, **_kwargs) -> None:
    beat = _heartbeats.pop(getattr(sender, "hostname", ""), None)
    if beat:
        beat.stop()
