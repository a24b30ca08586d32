"""The relay: ordered, numbered, lossless and resumable event streams from workers to subscribers.

Each job's events are numbered from 1. A subscriber asks for the events after an index and gets every later
one, in order, waiting for new ones until the terminal event ("done" or "error"). Cancel flags travel the same
way: a web process raises one, the worker checks it between tokens.

Production (HEARTH_REDIS_URL): one Redis Stream per job whose entry ids are "<index>-0", so resuming after N
is a plain XREAD from "N-0". Embedded: the same interface over in-process lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.conf import settings

TERMINAL_KINDS = frozenset({"done", "error"})
SUBSCRIBE_BLOCK_SECONDS = 15


def is_terminal(event: dict[str, Any]) -> bool:
    return event.get("kind") in TERMINAL_KINDS


class JobPublisher:
    """Numbers one job's events. A job is run by one worker, so the counter lives with it."""

    def __init__(self, relay: Relay, job_id: str):
        self.relay = relay
        self.job_id = job_id
        self.index = 0

    def publish(self, event: dict[str, Any]) -> int:
        self.index += 1
        self.relay.append(self.job_id, self.index, event)
        if is_terminal(event):
            self.relay.expire(self.job_id)
        return self.index


class Relay:
    def publisher(self, job_id: str) -> JobPublisher:
        return JobPublisher(self, str(job_id))

    def publish_terminal(self, job_id: str, event: dict[str, Any]) -> None:
        """Publish a terminal event for a job no worker has taken (cancelled or refused while queued)."""
        self.append(str(job_id), 1, event)
        self.expire(str(job_id))

    # Implemented by each relay.
    def append(self, job_id: str, index: int, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def expire(self, job_id: str) -> None:
        raise NotImplementedError

    async def subscribe(self, job_id: str, after: int = 0) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """Every event after index `after`, one at a time, until the terminal one."""
        async for batch in self.subscribe_batches(job_id, after):
            for item in batch:
                yield item

    def subscribe_batches(self, job_id: str, after: int = 0, *, interval: float = 0.0
                          ) -> AsyncIterator[list[tuple[int, dict[str, Any]]]]:
        """The events after `after` in lists: whatever has arrived when the subscriber asks, never empty.

        With `interval` > 0 a list is fetched at most once per `interval` seconds (the first one at once): a
        fast generation reaches the subscriber in fewer, larger lists, so the web process wakes and writes
        once per list instead of once per token."""
        raise NotImplementedError

    def request_cancel(self, job_id: str) -> None:
        raise NotImplementedError

    def is_cancelled(self, job_id: str) -> bool:
        raise NotImplementedError


def _numbered(events: list[dict[str, Any]], after: int) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """Number `events` from after + 1, cut after a terminal one; and whether one was there."""
    batch = []
    for index, event in enumerate(events, start=after + 1):
        batch.append((index, event))
        if is_terminal(event):
            return batch, True
    return batch, False


async def _pace(fetched_at: float, interval: float) -> None:
    remaining = fetched_at + interval - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)


@dataclass
class _Stream:
    events: list[dict[str, Any]] = field(default_factory=list)
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)
    expires_at: float | None = None


class InProcessRelay(Relay):
    def __init__(self, ttl_seconds: int):
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._cancelled: dict[str, float] = {}

    def _stream(self, job_id: str) -> _Stream:
        stream = self._streams.get(job_id)
        if stream is None:
            stream = self._streams[job_id] = _Stream()
        return stream

    def append(self, job_id: str, index: int, event: dict[str, Any]) -> None:
        with self._lock:
            stream = self._stream(job_id)
            if index != len(stream.events) + 1:
                raise ValueError(f"relay for job {job_id} expected event {len(stream.events) + 1}, got {index}")
            stream.events.append(event)
            waiters, stream.waiters = stream.waiters, []
        for loop, ready in waiters:
            loop.call_soon_threadsafe(ready.set)

    def expire(self, job_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._stream(job_id).expires_at = now + self.ttl_seconds
            for key in [k for k, s in self._streams.items() if s.expires_at is not None and s.expires_at < now]:
                del self._streams[key]
                self._cancelled.pop(key, None)

    async def subscribe_batches(self, job_id: str, after: int = 0, *, interval: float = 0.0
                                ) -> AsyncIterator[list[tuple[int, dict[str, Any]]]]:
        job_id = str(job_id)
        loop = asyncio.get_running_loop()
        while True:
            ready = asyncio.Event()
            with self._lock:
                events = list(self._stream(job_id).events[after:])
                if not events:
                    self._stream(job_id).waiters.append((loop, ready))
            if not events:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), SUBSCRIBE_BLOCK_SECONDS)
                continue
            fetched_at = time.monotonic()
            batch, ended = _numbered(events, after)
            after += len(batch)
            yield batch
            if ended:
                return
            await _pace(fetched_at, interval)

    def request_cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled[str(job_id)] = time.monotonic()

    def is_cancelled(self, job_id: str) -> bool:
        return str(job_id) in self._cancelled


class RedisStreamRelay(Relay):
    def __init__(self, url: str, ttl_seconds: int):
        import redis

        self.url = url
        self.ttl_seconds = ttl_seconds
        self.redis = redis.Redis.from_url(url)

    @staticmethod
    def _key(job_id: str) -> str:
        return f"hearth:job:{job_id}:events"

    @staticmethod
    def _cancel_key(job_id: str) -> str:
        return f"hearth:job:{job_id}:cancel"

    def append(self, job_id: str, index: int, event: dict[str, Any]) -> None:
        self.redis.xadd(self._key(job_id), {"e": json.dumps(event)}, id=f"{index}-0")

    def expire(self, job_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.expire(self._key(job_id), self.ttl_seconds)
        pipe.expire(self._cancel_key(job_id), self.ttl_seconds)
        pipe.execute()

    async def subscribe_batches(self, job_id: str, after: int = 0, *, interval: float = 0.0
                                ) -> AsyncIterator[list[tuple[int, dict[str, Any]]]]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        key = self._key(str(job_id))
        try:
            while True:
                reply = await client.xread({key: f"{after}-0"}, block=SUBSCRIBE_BLOCK_SECONDS * 1000, count=512)
                fetched_at = time.monotonic()
                batch, ended = [], False
                for _stream_key, entries in reply or []:
                    for entry_id, fields in entries:
                        after = int(entry_id.split(b"-")[0])
                        event = json.loads(fields[b"e"])
                        batch.append((after, event))
                        if is_terminal(event):
                            ended = True
                            break
                if not batch:
                    continue
                yield batch
                if ended:
                    return
                await _pace(fetched_at, interval)
        finally:
            await client.aclose()

    def request_cancel(self, job_id: str) -> None:
        self.redis.set(self._cancel_key(str(job_id)), "1", ex=self.ttl_seconds * 6)

    def is_cancelled(self, job_id: str) -> bool:
        return bool(self.redis.exists(self._cancel_key(str(job_id))))


@cache
def get_relay() -> Relay:
    if settings.REDIS_URL:
        return RedisStreamRelay(settings.REDIS_URL, settings.HEARTH_RELAY_TTL_SECONDS)
    return InProcessRelay(settings.HEARTH_RELAY_TTL_SECONDS)
