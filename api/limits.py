"""Per-key limits: requests per minute (a fixed one-minute window) and concurrent generations.

The request counter lives in Redis in production (shared by every web process) and in this process otherwise
(embedded mode has one web process). Concurrency is counted from the key's queued and running jobs in the database,
so it holds across processes and survives restarts. `check_concurrency` here answers early (and refuses a request
that could never fit with a 400); the check that holds under races is `inference.quotas.check_concurrency_locked`,
made with the key's row locked in the transaction that creates the job (`services.generation_start`), which also
reserves the request's tokens on its quotas.
"""

from __future__ import annotations

import threading
import time
from functools import cache

from django.conf import settings

from api.errors import error_response
from inference.quotas import CONCURRENCY_RETRY_AFTER_SECONDS, active_sequences

WINDOW_SECONDS = 60


class _LocalCounter:
    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, int], int] = {}

    def hit(self, key_id: int, window: int) -> int:
        with self._lock:
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}  # forget past windows
            count = self._counts.get((key_id, window), 0) + 1
            self._counts[(key_id, window)] = count
            return count


class _RedisCounter:
    def __init__(self, url: str):
        import redis

        self.redis = redis.Redis.from_url(url)

    def hit(self, key_id: int, window: int) -> int:
        name = f"hearth:ratelimit:{key_id}:{window}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(name)
        pipe.expire(name, WINDOW_SECONDS * 2)
        count, _ = pipe.execute()
        return int(count)


@cache
def _counter():
    return _RedisCounter(settings.REDIS_URL) if settings.REDIS_URL else _LocalCounter()


def rate_limited(message: str, retry_after: int):
    return error_response(message, status=429, code="rate_limit_exceeded",
                          headers={"Retry-After": str(max(1, retry_after))})


def check_request_rate(key):
    """None when the key may make this request (and counts it), else the 429 response."""
    limit = key.requests_per_minute
    if limit is None:
        return None
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    count = _counter().hit(key.pk, window)
    if count <= limit:
        return None
    retry_after = int((window + 1) * WINDOW_SECONDS - now) + 1
    return rate_limited(
        f"Rate limit reached for this API key: {limit} requests per minute. Try again in {retry_after} s.",
        retry_after,
    )


def check_concurrency(key, sequences: int = 1):
    """None when the key may start `sequences` more generations (a job's choices each count), else the 429
    response."""
    limit = key.max_concurrent_jobs
    if limit is None:
        return None
    active = active_sequences(key)
    if active + sequences <= limit:
        return None
    if sequences > limit:
        return error_response(f"This request needs {sequences} concurrent generations (n times its prompts); this "
                              f"API key may run {limit} at once.", param="n", code="invalid_value")
    return rate_limited(
        f"This API key already has {active} generations running or queued (its limit is {limit}); wait for one "
        "to finish.",
        CONCURRENCY_RETRY_AFTER_SECONDS,
    )

