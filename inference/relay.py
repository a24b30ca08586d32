"""The relay: ordered, numbered, lossless and resumable event streams from workers to subscribers.

Each job's events are numbered from 1. A subscriber asks for the events after an index and gets every later
one, in order, waiting for new ones until the terminal event ("done" or "error"). Flags travel beside them: a
web process raises a job's cancel flag, and keeps a "watched" mark fresh while someone follows the job; the
worker reads both for all its jobs at once, a few times a second.

One writer at a time: a worker `claim`s a job's stream before writing it, and an append by anyone else fails
with `StreamLost`. When a worker dies and another takes its job over, the new owner claims the stream, reads what
was already published, and continues from the next index: subscribers see one stream, no gap, no duplicate, and
a worker that only seemed dead learns at its next append that the job is no longer its own.

Production (HEARTH_REDIS_URL): one Redis Stream per job whose entry ids are "<index>-0", so resuming after N is a
plain XREAD from "N-0"; the owner check and the appends run together in one Lua script. A subscriber rides out a
Redis outage (reconnecting with backoff) for up to RELAY_OUTAGE_SECONDS, then raises RelayUnavailable. Embedded:
the same interface over in-process lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.conf import settings

TERMINAL_KINDS = frozenset({"done", "error"})
SUBSCRIBE_BLOCK_SECONDS = 5  # one XREAD waits this long; its socket timeout is longer (config/redis.py)
RELAY_OUTAGE_SECONDS = 20  # a subscriber gives up when Redis stays unreachable this long


def watch_seconds() -> int:
    """A job nobody has followed for this long is stopped by its worker (HEARTH_WATCH_SECONDS)."""
    return settings.HEARTH_WATCH_SECONDS

Event = dict[str, Any]
Numbered = tuple[int, Event]


class StreamLost(Exception):
    """The job's stream belongs to another writer now (the job was taken over), or its state was lost."""


class RelayUnavailable(Exception):
    """The relay (Redis) stayed unreachable longer than a subscriber waits."""


def relay_unavailable_event(error: Exception) -> Event:
    """The error event a subscriber ends with when the relay stayed unreachable."""
    return {"kind": "error", "code": "relay_unavailable", "status": 503, "retry_after": 5,
            "message": f"The server lost its connection to Redis and could not follow this request ({error}). "
                       "Try again in a few seconds."}


def is_terminal(event: Event) -> bool:
    return event.get("kind") in TERMINAL_KINDS


class JobPublisher:
    """One owner's writer of one job's stream: numbers the events from `after` + 1."""

    def __init__(self, relay: Relay, job_id: str, owner: str, after: int = 0):
        self.relay = relay
        self.job_id = job_id
        self.owner = owner
        self.index = after

    def publish(self, event: Event) -> int:
        return self.publish_many([event])

    def publish_many(self, events: list[Event]) -> int:
        """Append events in one round trip; raises StreamLost when the stream is no longer this owner's."""
        if not events:
            return self.index
        numbered = [(self.index + offset, event) for offset, event in enumerate(events, start=1)]
        self.relay.append(self.job_id, self.owner, numbered)
        self.index = numbered[-1][0]
        if is_terminal(events[-1]):
            self.relay.expire(self.job_id)
        return self.index


def publish_together(writes: list[tuple[JobPublisher, list[Event]]]) -> list[StreamLost | None]:
    """Several publishers' events in one round trip where the relay can (a worker's step: one write for all its
    jobs). One result per publisher: None when written, StreamLost when its stream is no longer its own. The
    relay's own error (Redis down) is raised and nothing is taken: the caller keeps the events for the next try."""
    if not writes:
        return []
    relay = writes[0][0].relay
    appends = []
    for publisher, events in writes:
        numbered = [(publisher.index + offset, event) for offset, event in enumerate(events, start=1)]
        appends.append((publisher.job_id, publisher.owner, numbered))
    results = relay.append_many(appends)
    for (publisher, events), (_job, _owner, numbered), result in zip(writes, appends, results, strict=True):
        if result is None and numbered:
            publisher.index = numbered[-1][0]
            if is_terminal(events[-1]):
                relay.expire(publisher.job_id)
    return results


class Relay:
    def claim(self, job_id: str, owner: str) -> list[Numbered]:
        """Become the only writer of a job's stream; returns the events published so far (by earlier owners)."""
        raise NotImplementedError

    def publisher(self, job_id: str, owner: str, after: int = 0) -> JobPublisher:
        return JobPublisher(self, str(job_id), owner, after)

    def publish_terminal(self, job_id: str, event: Event, owner: str = "web") -> int:
        """End a job no worker holds (cancelled or refused while queued, its worker gone): claim its stream and
        append the terminal event after whatever was published. Returns its index."""
        existing = self.claim(str(job_id), owner)
        if existing and is_terminal(existing[-1][1]):
            return existing[-1][0]
        return self.publisher(str(job_id), owner, existing[-1][0] if existing else 0).publish(event)

    def append_many(self, appends: list[tuple[str, str, list[Numbered]]]) -> list[StreamLost | None]:
        """`append` for several streams (job id, owner, events); one result each (None: written). A relay that can
        does it in one round trip."""
        results: list[StreamLost | None] = []
        for job_id, owner, numbered in appends:
            try:
                self.append(job_id, owner, numbered)
                results.append(None)
            except StreamLost as lost:
                results.append(lost)
        return results

    # Implemented by each relay.
    def append(self, job_id: str, owner: str, numbered: list[Numbered]) -> None:
        raise NotImplementedError

    def expire(self, job_id: str) -> None:
        raise NotImplementedError

    def read(self, job_id: str, after: int = 0) -> list[Numbered]:
        """Every event published after `after`, now (no waiting)."""
        raise NotImplementedError

    async def subscribe(self, job_id: str, after: int = 0) -> AsyncIterator[Numbered]:
        """Every event after index `after`, one at a time, until the terminal one."""
        async for batch in self.subscribe_batches(job_id, after):
            for item in batch:
                yield item

    def subscribe_batches(self, job_id: str, after: int = 0, *, interval: float = 0.0
                          ) -> AsyncIterator[list[Numbered]]:
        """The events after `after` in lists: whatever has arrived when the subscriber asks, until the terminal
        event. While it runs, the job is marked watched. An empty list comes every few seconds when nothing
        arrived, so the caller can look around (has the client gone?).

        With `interval` > 0 a list is fetched at most once per `interval` seconds (the first one at once): a
        fast generation reaches the subscriber in fewer, larger lists, so the web process wakes and writes
        once per list instead of once per token."""
        raise NotImplementedError

    def request_cancel(self, job_id: str) -> None:
        raise NotImplementedError

    def cancelled(self, job_ids: Iterable[str]) -> set[str]:
        """Those of `job_ids` whose cancel flag is up (one round trip)."""
        raise NotImplementedError

    def is_cancelled(self, job_id: str) -> bool:
        return str(job_id) in self.cancelled([str(job_id)])

    def watch(self, job_id: str, seconds: int | None = None) -> None:
        """Mark a job as followed for the next `seconds` (default HEARTH_WATCH_SECONDS; subscribers renew it as
        they read, and a client that hangs up leaves it for a shorter grace to come back)."""
        raise NotImplementedError

    def watched(self, job_ids: Iterable[str]) -> set[str]:
        """Those of `job_ids` that someone followed recently (one round trip)."""
        raise NotImplementedError


def _numbered(events: list[Event], after: int) -> tuple[list[Numbered], bool]:
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
    events: list[Event] = field(default_factory=list)
    owner: str = ""
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)
    expires_at: float | None = None


class InProcessRelay(Relay):
    def __init__(self, ttl_seconds: int):
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._cancelled: dict[str, float] = {}
        self._watched: dict[str, float] = {}

    def _stream(self, job_id: str) -> _Stream:
        stream = self._streams.get(job_id)
        if stream is None:
            stream = self._streams[job_id] = _Stream()
        return stream

    def claim(self, job_id: str, owner: str) -> list[Numbered]:
        with self._lock:
            stream = self._stream(str(job_id))
            stream.owner = owner
            return list(enumerate(stream.events, start=1))

    def append(self, job_id: str, owner: str, numbered: list[Numbered]) -> None:
        with self._lock:
            stream = self._stream(job_id)
            if stream.owner != owner:
                raise StreamLost(f"job {job_id} is written by {stream.owner or 'nobody'} now, not {owner}")
            for index, event in numbered:
                if index <= len(stream.events):
                    continue  # sent again by its owner: it is there already (as on Redis)
                if index != len(stream.events) + 1:
                    raise StreamLost(f"job {job_id} expected event {len(stream.events) + 1}, got {index}")
                stream.events.append(event)
            waiters, stream.waiters = stream.waiters, []
        for loop, ready in waiters:
            with contextlib.suppress(RuntimeError):  # a subscriber whose loop has closed
                loop.call_soon_threadsafe(ready.set)

    def expire(self, job_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._stream(job_id).expires_at = now + self.ttl_seconds
            for key in [k for k, s in self._streams.items() if s.expires_at is not None and s.expires_at < now]:
                del self._streams[key]
                self._cancelled.pop(key, None)
                self._watched.pop(key, None)

    def read(self, job_id: str, after: int = 0) -> list[Numbered]:
        with self._lock:
            events = list(self._stream(str(job_id)).events[after:])
        return list(enumerate(events, start=after + 1))

    async def subscribe_batches(self, job_id: str, after: int = 0, *, interval: float = 0.0
                                ) -> AsyncIterator[list[Numbered]]:
        job_id = str(job_id)
        loop = asyncio.get_running_loop()
        while True:
            self.watch(job_id)
            ready = asyncio.Event()
            with self._lock:
                events = list(self._stream(job_id).events[after:])
                if not events:
                    self._stream(job_id).waiters.append((loop, ready))
            if not events:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), SUBSCRIBE_BLOCK_SECONDS)
                if not ready.is_set():
                    yield []
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

    def cancelled(self, job_ids: Iterable[str]) -> set[str]:
        with self._lock:
            return {str(j) for j in job_ids if str(j) in self._cancelled}

    def watch(self, job_id: str, seconds: int | None = None) -> None:
        with self._lock:
            self._watched[str(job_id)] = time.monotonic() + (seconds or watch_seconds())

    def watched(self, job_ids: Iterable[str]) -> set[str]:
        now = time.monotonic()
        with self._lock:
            return {str(j) for j in job_ids if self._watched.get(str(j), 0) > now}


# KEYS: stream, owner; ARGV: owner, a TTL, then (id, event json) pairs. The owner must match (or the stream and its
# owner must both be gone, when Redis lost them); the appends run together, and the keys of a stream still being
# written live a day (expire() shortens that once it ends). An append is idempotent: an event whose index the stream
# already holds is skipped. Only the owner writes, so such an event is this owner's own, sent again because the
# reply to the first try was lost (a timeout, a connection cut by a Redis restart, redis-py's own retry); refusing
# it would make the owner believe its job was taken over and stop writing a stream nobody else writes.
_APPEND_SCRIPT = """
local owner = redis.call('GET', KEYS[2])
if owner == false and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], ARGV[1])  -- Redis restarted without its data: the stream's writer goes on
elseif owner ~= ARGV[1] then
  return redis.error_reply('HEARTH_STREAM_LOST')
end
local last = 0
local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #tail > 0 then
  last = tonumber(string.match(tail[1][1], '^%d+'))
end
for i = 3, #ARGV, 2 do
  if tonumber(string.match(ARGV[i], '^%d+')) > last then
    redis.call('XADD', KEYS[1], ARGV[i], 'e', ARGV[i + 1])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return #ARGV
"""
LIVE_STREAM_TTL_SECONDS = 24 * 3600


class RedisStreamRelay(Relay):
    def __init__(self, url: str, ttl_seconds: int):
        import redis

        from config.redis import client_options

        self.url = url
        self.ttl_seconds = ttl_seconds
        self.redis = redis.Redis.from_url(url, **client_options())
        self._append = self.redis.register_script(_APPEND_SCRIPT)

    @staticmethod
    def _key(job_id: str) -> str:
        return f"hearth:job:{job_id}:events"

    @staticmethod
    def _owner_key(job_id: str) -> str:
        return f"hearth:job:{job_id}:owner"

    @staticmethod
    def _cancel_key(job_id: str) -> str:
        return f"hearth:job:{job_id}:cancel"

    @staticmethod
    def _watch_key(job_id: str) -> str:
        return f"hearth:job:{job_id}:watched"

    def claim(self, job_id: str, owner: str) -> list[Numbered]:
        job_id = str(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._owner_key(job_id), owner, ex=LIVE_STREAM_TTL_SECONDS)
        pipe.xrange(self._key(job_id))
        _, entries = pipe.execute()
        return [(int(entry_id.split(b"-")[0]), json.loads(fields[b"e"])) for entry_id, fields in entries]

    def append(self, job_id: str, owner: str, numbered: list[Numbered]) -> None:
        result = self.append_many([(job_id, owner, numbered)])[0]
        if result is not None:
            raise result

    def append_many(self, appends: list[tuple[str, str, list[Numbered]]]) -> list[StreamLost | None]:
        import redis

        pipe = self.redis.pipeline(transaction=False)
        for job_id, owner, numbered in appends:
            arguments = [owner, LIVE_STREAM_TTL_SECONDS]
            for index, event in numbered:
                arguments += [f"{index}-0", json.dumps(event)]
            self._append(keys=[self._key(job_id), self._owner_key(job_id)], args=arguments, client=pipe)
        results: list[StreamLost | None] = []
        for (job_id, _owner, _numbered), reply in zip(appends, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, redis.ResponseError) and "HEARTH_STREAM_LOST" in str(reply):
                results.append(StreamLost(f"job {job_id}: {reply}"))
            elif isinstance(reply, Exception):
                raise reply
            else:
                results.append(None)
        return results

    def expire(self, job_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key in (self._key(job_id), self._owner_key(job_id), self._cancel_key(job_id), self._watch_key(job_id)):
            pipe.expire(key, self.ttl_seconds)
        pipe.execute()

    def read(self, job_id: str, after: int = 0) -> list[Numbered]:
        entries = self.redis.xrange(self._key(str(job_id)), min=f"({after}-0" if after else "-")
        return [(int(entry_id.split(b"-")[0]), json.loads(fields[b"e"])) for entry_id, fields in entries]

    async def subscribe_batches(self, job_id: str, after: int = 0, *, interval: float = 0.0
                                ) -> AsyncIterator[list[Numbered]]:
        import redis
        import redis.asyncio as aioredis

        from config.redis import async_retry_options

        job_id = str(job_id)
        key = self._key(job_id)
        options = async_retry_options(SUBSCRIBE_BLOCK_SECONDS)
        client = aioredis.Redis.from_url(self.url, **options)
        failing_since: float | None = None
        watched_at = 0.0
        try:
            while True:
                try:
                    if time.monotonic() - watched_at > watch_seconds() / 4:
                        await client.set(self._watch_key(job_id), "1", ex=watch_seconds())
                        watched_at = time.monotonic()
                    reply = await client.xread({key: f"{after}-0"}, block=SUBSCRIBE_BLOCK_SECONDS * 1000,
                                               count=512)
                    failing_since = None
                except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > RELAY_OUTAGE_SECONDS:
                        raise RelayUnavailable(f"Redis has been unreachable for {RELAY_OUTAGE_SECONDS} s "
                                               f"({type(error).__name__}).") from None
                    await client.aclose()
                    await asyncio.sleep(min(2.0, 0.1 + (now - failing_since) / 4))
                    client = aioredis.Redis.from_url(self.url, **options)
                    watched_at = 0.0
                    continue
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
                yield batch
                if ended:
                    return
                if batch:
                    await _pace(fetched_at, interval)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    def request_cancel(self, job_id: str) -> None:
        self.redis.set(self._cancel_key(str(job_id)), "1", ex=self.ttl_seconds * 6)

    def cancelled(self, job_ids: Iterable[str]) -> set[str]:
        ids = [str(j) for j in job_ids]
        if not ids:
            return set()
        flags = self.redis.mget([self._cancel_key(j) for j in ids])
        return {j for j, flag in zip(ids, flags, strict=True) if flag is not None}

    def watch(self, job_id: str, seconds: int | None = None) -> None:
        self.redis.set(self._watch_key(str(job_id)), "1", ex=seconds or watch_seconds())

    def watched(self, job_ids: Iterable[str]) -> set[str]:
        ids = [str(j) for j in job_ids]
        if not ids:
            return set()
        marks = self.redis.mget([self._watch_key(j) for j in ids])
        return {j for j, mark in zip(ids, marks, strict=True) if mark is not None}


@cache
def get_relay() -> Relay:
    if settings.REDIS_URL:
        return RedisStreamRelay(settings.REDIS_URL, settings.HEARTH_RELAY_TTL_SECONDS)
    return InProcessRelay(settings.HEARTH_RELAY_TTL_SECONDS)
