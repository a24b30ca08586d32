"""The embedded mode's workers, in the web process: a Celery worker thread on kombu's in-memory transport for the
generation jobs, one converter thread for the model conversions and one puller thread for the pulls from the Hugging
Face Hub (never one of the generation slots; a long conversion does not hold up a download, nor the reverse)."""

from __future__ import annotations

import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from django.conf import settings

from config.celery import app

log = logging.getLogger(__name__)


def embedded_hostname() -> str:
    """The name the embedded mode's worker and converter go by (as `celery worker --hostname` would)."""
    return f"embedded@{socket.gethostname()}"


def start_embedded_worker() -> threading.Thread:
    """Start one worker (a pool of HEARTH_WORKER_SLOTS threads feeding the engine) in a daemon thread."""
    import inference.tasks  # noqa: F401  (registers the tasks before the worker starts consuming)
    from inference.tasks import start_worker_heartbeat

    hostname = embedded_hostname()
    worker = app.WorkController(
        hostname=hostname,
        pool_cls="threads",
        concurrency=settings.HEARTH_WORKER_SLOTS,
        queues=["generation"],
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="WARNING",
    )
    thread = threading.Thread(target=worker.start, name="hearth-embedded-worker", daemon=True)
    thread.start()
    start_worker_heartbeat(hostname)
    try:
        resume_conversions()
        resume_pulls()
    except Exception:
        log.warning("could not look for unfinished conversions or pulls", exc_info=True)
    return thread


@cache
def _converter() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="hearth-converter")


def convert_in_background(conversion_id: int) -> None:
    """Run a queued conversion on this process's converter thread, one after the other."""
    _converter().submit(_convert, conversion_id)


def _convert(conversion_id: int) -> None:
    from django.db import close_old_connections

    from inference.conversions import conversion_run

    try:
        conversion_run(conversion_id, embedded_hostname())
    except Exception:
        log.exception("conversion %s failed", conversion_id)
    finally:
        close_old_connections()


def resume_conversions() -> int:
    """At start: the conversions this server had queued or running when it stopped start over."""
    from inference.models import JobStatus, ModelConversion

    unfinished = list(ModelConversion.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
                      .values_list("pk", flat=True))
    ModelConversion.objects.filter(pk__in=unfinished).update(status=JobStatus.QUEUED, progress=0.0, worker="")
    for pk in unfinished:
        convert_in_background(pk)
    return len(unfinished)


@cache
def _puller() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="hearth-puller")


def pull_in_background(pull_id: int) -> None:
    """Run a queued pull on this process's puller thread, one after the other."""
    _puller().submit(_pull, pull_id)


def _pull(pull_id: int) -> None:
    from django.db import close_old_connections

    from inference.pulls import pull_run

    try:
        pull_run(pull_id, embedded_hostname())
    except Exception:
        log.exception("pull %s failed", pull_id)
    finally:
        close_old_connections()


def resume_pulls() -> int:
    """At start: the pulls this server had queued or running when it stopped go on, from the bytes on disk."""
    from inference.models import JobStatus, ModelPull

    unfinished = list(ModelPull.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
                      .values_list("pk", flat=True))
    ModelPull.objects.filter(pk__in=unfinished).update(status=JobStatus.QUEUED, worker="")
    for pk in unfinished:
        pull_in_background(pk)
    return len(unfinished)
