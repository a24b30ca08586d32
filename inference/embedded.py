"""The embedded mode's worker: a Celery worker thread in the web process, on kombu's in-memory transport."""

from __future__ import annotations

import logging
import socket
import threading

from config.celery import app

log = logging.getLogger(__name__)


def start_embedded_worker() -> threading.Thread:
    """Start one solo-pool worker (one generation at a time) in a daemon thread and return the thread."""
    import inference.tasks  # noqa: F401  (registers the tasks before the worker starts consuming)
    from inference.presence import Heartbeat

    hostname = f"embedded@{socket.gethostname()}"
    worker = app.WorkController(
        hostname=hostname,
        pool_cls="solo",
        concurrency=1,
        queues=["generation"],
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="WARNING",
    )
    thread = threading.Thread(target=worker.start, name="hearth-embedded-worker", daemon=True)
    thread.start()
    Heartbeat(hostname).start()
    return thread
