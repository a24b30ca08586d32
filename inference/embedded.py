"""The embedded mode's worker: a Celery worker thread in the web process, on kombu's in-memory transport."""

from __future__ import annotations

import logging
import socket
import threading

from django.conf import settings

from config.celery import app

log = logging.getLogger(__name__)


def start_embedded_worker() -> threading.Thread:
    """Start one worker (a pool of HEARTH_WORKER_SLOTS threads feeding the engine) in a daemon thread."""
    import inference.tasks  # noqa: F401  (registers the tasks before the worker starts consuming)
    from inference.tasks import start_worker_heartbeat

    hostname = f"embedded@{socket.gethostname()}"
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
    return thread
