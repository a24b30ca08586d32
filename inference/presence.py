"""Which workers are alive, and which models each holds in memory.

Each worker process beats every few seconds (a beat expires after three periods), and at once when its model
cache changes. A beat carries the (backend, model path) pairs loaded in the worker's `ModelCache`, which the
library page shows as each model's load state. The cache is read in the worker's own process: with the solo
pool that Hearth's workers use, the jobs run in the process that beats.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from functools import cache

from django.conf import settings

log = logging.getLogger(__name__)
WORKER = "worker"  # a generation worker: holds models and jobs
CONVERTER = "converter"  # a conversion worker (the "conversions" queue): converts models, serves no job
PULLER = "puller"  # a pull worker (the "pulls" queue): fetches models from the Hugging Face Hub, serves no job
CHANGE_POLL_SECONDS = 0.5  # how soon a newly loaded (or evicted) model shows

Loaded = list[tuple[str, str]]  # (backend, model path) pairs


class Presence:
    """The live processes of one role (WORKER or CONVERTER)."""

    def __init__(self, role: str = WORKER) -> None:
        self.key_prefix = f"hearth:{role}:"
        self._local: dict[str, tuple[float, Loaded]] = {}
        self._engine: dict[str, list] = {}
        self._redis = None
        if settings.REDIS_URL:
            import redis

            from config.redis import client_options

            self._redis = redis.Redis.from_url(settings.REDIS_URL, **client_options())

    @property
    def ttl(self) -> int:
        return settings.HEARTH_WORKER_HEARTBEAT_SECONDS * 3

    def beat(self, hostname: str, loaded: Loaded | None = None, engine: list | None = None) -> None:
        """`engine`: the worker's schedulers (slots, running, waiting, caches), shown on /health."""
        loaded = [(str(backend), str(path)) for backend, path in loaded or []]
        if self._redis is not None:
            payload = json.dumps({"at": time.time(), "loaded": loaded, "engine": engine or []})
            self._redis.set(self.key_prefix + hostname, payload, ex=self.ttl)
        else:
            self._local[hostname] = (time.monotonic(), loaded)
            self._engine[hostname] = engine or []

    def engine_stats(self) -> dict[str, list]:
        """Every live worker's schedulers, as its last beat reported them."""
        if self._redis is not None:
            keys = list(self._redis.scan_iter(self.key_prefix + "*"))
            values = self._redis.mget(keys) if keys else []
            stats = {}
            for key, value in zip(keys, values, strict=True):
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    stats[key.decode()[len(self.key_prefix):]] = json.loads(value).get("engine", [])
            return stats
        live = set(self.live_workers())
        return {name: list(stats) for name, stats in self._engine.items() if name in live}

    def leave(self, hostname: str) -> None:
        if self._redis is not None:
            self._redis.delete(self.key_prefix + hostname)
        else:
            self._local.pop(hostname, None)
            self._engine.pop(hostname, None)

    def live_workers(self) -> list[str]:
        return sorted(self.loaded_models())

    def loaded_models(self) -> dict[str, Loaded]:
        """Every live worker with the (backend, model path) pairs it holds loaded."""
        if self._redis is not None:
            keys = list(self._redis.scan_iter(self.key_prefix + "*"))
            values = self._redis.mget(keys) if keys else []
            return {key.decode()[len(self.key_prefix):]: _parse_loaded(value)
                    for key, value in zip(keys, values, strict=True) if value is not None}
        now = time.monotonic()
        return {name: list(loaded) for name, (seen, loaded) in self._local.items() if now - seen < self.ttl}


def _parse_loaded(value: bytes) -> Loaded:
    try:
        payload = json.loads(value)
        return [(str(backend), str(path)) for backend, path in payload.get("loaded", [])]
    except (ValueError, TypeError, AttributeError):
        return []  # a beat from an older worker: a bare timestamp


def get_presence(role: str = WORKER) -> Presence:
    return _presence_of(role)  # one per role, however the role is passed


@cache
def _presence_of(role: str) -> Presence:
    return Presence(role)


get_presence.cache_clear = _presence_of.cache_clear


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


def engine_stats() -> list:
    """This process's schedulers (nothing before its first job: the runner is not imported here)."""
    runner = sys.modules.get("inference.runner")
    if runner is None:
        return []
    try:
        return runner.engine().stats()
    except RuntimeError:
        return []


class Heartbeat:
    """A daemon thread that keeps one worker's beat fresh until stopped, and beats at once when the models loaded
    in this process change. With `leases`, a second thread renews the leases of the jobs this process holds
    every beat (those no longer its own are abandoned by its engine) and runs the reaper (inference/leases.py):
    apart, so that a database that hangs (its pool waits up to HEARTH_DB_POOL_TIMEOUT) never stops the beat in
    Redis, which tells the reaper this worker is alive when its leases lapse during a database outage."""

    def __init__(self, hostname: str, loaded: Callable[[], Loaded | None] = cached_models, *, leases: bool = False,
                 role: str = WORKER):
        self.hostname = hostname
        self.role = role
        self._loaded = loaded
        self._leases = leases
        self._last: Loaded = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{hostname}", daemon=True)
        self._lease_thread = threading.Thread(target=self._tend_leases_every_beat, name=f"leases-{hostname}",
                                              daemon=True)

    def start(self) -> None:
        self._last = self._loaded() or []
        with contextlib.suppress(Exception):  # Redis down at start: the thread keeps trying
            get_presence(self.role).beat(self.hostname, self._last, engine_stats())
        self._thread.start()
        if self._leases:
            self._lease_thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)  # so that no beat lands after the leave
        with contextlib.suppress(Exception):
            get_presence(self.role).leave(self.hostname)

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
                get_presence(self.role).beat(self.hostname, self._last, engine_stats())
                last_beat = time.monotonic()

    def _tend_leases_every_beat(self) -> None:
        while not self._stopped.wait(settings.HEARTH_WORKER_HEARTBEAT_SECONDS):
            self._tend_leases()

    def _tend_leases(self) -> None:
        from django.db import close_old_connections

        from inference import leases, runner

        try:
            lost = leases.renew(self.hostname, runner.HELD.ids())
            if lost:
                runner.engine().abandon(lost, "taken over")
            leases.REAPER.run()
        except Exception:  # the database is down: the leases lapse only if the heartbeats stop too
            log.warning("could not renew leases or reap", exc_info=True)
        finally:
            close_old_connections()
