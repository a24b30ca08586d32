"""Following a job from the web side: its relay stream, watched for a stream that lost its end.

A worker writes a job's row before it publishes the terminal event. Should that publish be lost (the relay down
longer than the worker retries, RELAY_OUTAGE_SECONDS), the followers of a finished job would wait for an end that
never comes. So a follower that hears nothing for QUIET_CHECK_SECONDS looks at the row: finished more than
END_GRACE_SECONDS ago and still no end in the stream, it ends the stream itself with an error event that says so.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta

from channels.db import database_sync_to_async
from django.utils import timezone

from inference.relay import RELAY_OUTAGE_SECONDS, Event, Numbered, get_relay

log = logging.getLogger(__name__)
QUIET_CHECK_SECONDS = 10  # a stream silent this long has its job's row looked at
END_GRACE_SECONDS = 2 * RELAY_OUTAGE_SECONDS + 5  # a worker's publish of the end retries this long at most


async def follow(job_id: str, after: int = 0, *, interval: float = 0.0) -> AsyncIterator[list[Numbered]]:
    """The relay's `subscribe_batches` (lists of events after `after`, an empty list every few quiet seconds,
    RelayUnavailable when Redis stays away), ending with an error event when the job finished without its end."""
    quiet_since = time.monotonic()
    async with contextlib.aclosing(get_relay().subscribe_batches(job_id, after, interval=interval)) as batches:
        async for batch in batches:
            if batch:
                after, quiet_since = batch[-1][0], time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_CHECK_SECONDS:
                quiet_since = time.monotonic()
                lost = await _lost_end(job_id)
                if lost is not None:
                    yield [(after + 1, lost)]
                    return
            yield batch


@database_sync_to_async
def _lost_end(job_id: str) -> Event | None:
    from inference.models import FINISHED_STATUSES, GenerationJob

    try:
        row = GenerationJob.objects.filter(pk=job_id).values("status", "finished_at").first()
    except Exception:  # the database is away too: look again at the next quiet moment
        log.warning("could not look at job %s", job_id, exc_info=True)
        return None
    if row is None or row["status"] not in FINISHED_STATUSES or row["finished_at"] is None:
        return None
    if timezone.now() - row["finished_at"] < timedelta(seconds=END_GRACE_SECONDS):
        return None
    return {"kind": "error", "code": "stream_lost", "status": 503, "retry_after": 1,
            "message": f"This reply's stream lost its end (the server's connection to Redis was cut as the job "
                       f"ended); the job {row['status']}. Its whole text is on the jobs page."}
