"""Which workers are alive, and which models each holds in memory.

Each worker process beats every few seconds (a beat expires after three periods), and at once when its model
cache changes. A beat carries the (backend, model path) pairs loaded in the worker's `ModelCache`, which the
library page shows as each model's load state. The cache is read in the worker's own process: with the solo
pool that Hearth's workers use, the jobs run in the process that beats.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from functools import cache

from django.conf import settings

KEY_PREFIX = "hearth:worker:"
CHANGE_POLL_SECONDS = 0.5  # how soon a newly loaded (or evicted) model shows

Loaded = list[tuple[str, str]]  # (backend, model path) pairs


class Presence:
    def __init__(self) -> None:
        self._local: dict[str, tuple[float, Loaded]] = {}
        self._redis = None
        if settings.REDIS_URL:
            import redis

            self._redis = redis.Redis.from_url(settings.REDIS_URL)

    @property
    def ttl(self) -> int:
        return settings.HEARTH_WORKER_HEARTBEAT_SECONDS * 3

    def beat(self, hostname: str, loaded: Loaded | None = None) -> None:
        loaded = [(str(backend), str(path)) for backend, path in loaded or []]
        if self._redis is not None:
            payload = json.dumps({"at": time.time(), "loaded": loaded})
            self._redis.set(KEY_PREFIX + hostname, payload, ex=self.ttl)
        else:
            self._local[hostname] = (time.monotonic(), loaded)

    def leave(self, hostname: str) -> None:
        if self._redis is not None:
            self._redis.delete(KEY_PREFIX + hostname)
        else:
            self._local.pop(hostname, None)

    def live_workers(self) -> list[str]:
        return sorted(self.loaded_models())

    def loaded_models(self) -> dict[str, Loaded]:
        """Every live worker with the (backend, model path) pairs it holds loaded."""
        if self._redis is not None:
            keys = list(self._redis.scan_iter(KEY_PREFIX + "*"))
            values = self._redis.mget(keys) if keys else []
            return {key.decode()[len(KEY_PREFIX):]: _parse_loaded(value)
                    for key, value in zip(keys, values, strict=True) if value is not None}
        now = time.monotonic()
        return {name: list(loaded) for name, (seen, loaded) in self._local.items() if now - seen < self.ttl}


def _parse_loaded(value: bytes) -> Loaded:
    try:
        payload = json.loads(value)
        return [(str(backend), str(path)) for backend, path in payload.get("loaded", [])]
    except (ValueError, TypeError, AttributeError):
        return []  # a beat from an older worker: a bare timestamp


@cache
def get_presence() -> Presence:
    return Presence()


def loaded_backends_by_path() -> dict[str, list[str]]:
    """Model path -> the backends that hold it loaded in some live worker."""
    backends: dict[str, set[str]] = {}
    for pairs in get_presence().loaded_models().values():
        for backend, path in pairs:
            backends.setdefault(path, set()).add(backend)
    return {path: sorted(names) for path, names in backends.items()}


def cached_models() -> Loaded | None:
    """The (backend, model path) pairs in this process's model cache (the runner's), or None when the cache was
    busy changing. The runner is not imported here: before its first job a worker has nothing loaded."""
    runner = sys.modules.get("inference.runner")
    model_cache = getattr(runner, "MODEL_CACHE", None)
    if model_cache is None:
        return []
    try:
        return sorted(set(model_cache.loaded_keys()))
    except RuntimeError:  # the cache's dict changed size while we read it; the next poll reads again
        return None


class Heartbeat:
    """A daemon thread that keeps one worker's beat fresh until stopped, and beats at once when the models loaded
    in this process change."""

    def __init__(self, hostname: str, loaded: Callable[[], Loaded | None] = cached_models):
        self.hostname = hostname
        self._loaded = loaded
        self._last: Loaded = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{hostname}", daemon=True)

    def start(self) -> None:
        self._last = self._loaded() or []
        get_presence().beat(self.hostname, self._last)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)  # so that no beat lands after the leave
        get_presence().leave(self.hostname)

    def _run(self) -> None:
        period = settings.HEARTH_WORKER_HEARTBEAT_SECONDS
        last_beat = time.monotonic()
        while not self._stopped.wait(min(CHANGE_POLL_SECONDS, period)):
            loaded = self._loaded()
            changed = loaded is not None and loaded != self._last
            if not changed and time.monotonic() - last_beat < period:
                continue
            if loaded is not None:
                self._last = loaded
            # A Redis blip must not kill the beat; the next one retries.
            with contextlib.suppress(Exception):
                get_presence().beat(self.hostname, self._last)
                last_beat = time.monotonic()
