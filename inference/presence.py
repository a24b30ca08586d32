"""Which workers are alive: each worker process beats every few seconds; a beat expires after three periods."""

from __future__ import annotations

import contextlib
import threading
import time
from functools import cache

from django.conf import settings

KEY_PREFIX = "hearth:worker:"


class Presence:
    def __init__(self) -> None:
        self._local: dict[str, float] = {}
        self._redis = None
        if settings.REDIS_URL:
            import redis

            self._redis = redis.Redis.from_url(settings.REDIS_URL)

    @property
    def ttl(self) -> int:
        return settings.HEARTH_WORKER_HEARTBEAT_SECONDS * 3

    def beat(self, hostname: str) -> None:
        if self._redis is not None:
            self._redis.set(KEY_PREFIX + hostname, str(time.time()), ex=self.ttl)
        else:
            self._local[hostname] = time.monotonic()

    def leave(self, hostname: str) -> None:
        if self._redis is not None:
            self._redis.delete(KEY_PREFIX + hostname)
        else:
            self._local.pop(hostname, None)

    def live_workers(self) -> list[str]:
        if self._redis is not None:
            return sorted(k.decode()[len(KEY_PREFIX) :] for k in self._redis.scan_iter(KEY_PREFIX + "*"))
        now = time.monotonic()
        return sorted(name for name, seen in self._local.items() if now - seen < self.ttl)


@cache
def get_presence() -> Presence:
    return Presence()


class Heartbeat:
    """A daemon thread that keeps one worker's beat fresh until stopped."""

    def __init__(self, hostname: str):
        self.hostname = hostname
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{hostname}", daemon=True)

    def start(self) -> None:
        get_presence().beat(self.hostname)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        get_presence().leave(self.hostname)

    def _run(self) -> None:
        while not self._stopped.wait(settings.HEARTH_WORKER_HEARTBEAT_SECONDS):
            # A Redis blip must not kill the beat; the next one retries.
            with contextlib.suppress(Exception):
                get_presence().beat(self.hostname)
