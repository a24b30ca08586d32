"""From a job's relay events to OpenAI responses: one JSON answer, or SSE chunks.

Both wait for the job's first event before answering, so a prompt over the context or a backend that cannot
load still gets a proper status code (400, 503, ...) instead of a 200 that carries an error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import StreamingHttpResponse

from api.errors import error_payload, error_response
from inference.models import GenerationJob
from inference.relay import get_relay

FIRST_EVENT_TIMEOUT_SECONDS = 900


@dataclass
class JobOutcome:
    """What the events of a finished job add up to."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    backend: str = ""
    error: dict[str, Any] | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # per token, when the request asked for them

    def apply(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "started":
            self.prompt_tokens = event.get("prompt_tokens", 0)
            self.backend = event.get("backend", "")
        elif kind == "token":
            self.text += event.get("text", "")
            self.completion_tokens += 1
            self.logprobs.extend(event.get("logprobs") or ())
        elif kind == "done":
            self.finish_reason = event.get("finish_reason") or "stop"
            self.prompt_tokens = event.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = event.get("completion_tokens", self.completion_tokens)
            self.timings = {k: event.get(k) for k in ("time_to_first_token", "tokens_per_second")}
        elif kind == "error":
            self.error = event

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def error_event_response(event: dict[str, Any]):
    return error_response(event.get("message", "Generation failed."), status=event.get("status", 500),
                          code=event.get("code"))


async def cancel_job(job_id: str) -> None:
    from inference.services import generation_cancel

    job = await GenerationJob.objects.aget(id=job_id)
    await sync_to_async(generation_cancel)(job)


class JobEvents:
    """A job's events with the first one awaited up front, read in lists paced by HEARTH_STREAM_INTERVAL_MS."""

    def __init__(self, job_id: str, after: int = 0):
        self.job_id = str(job_id)
        interval = settings.HEARTH_STREAM_INTERVAL_MS / 1000
        self._batches = get_relay().subscribe_batches(self.job_id, after, interval=interval)
        self._first_batch: list[tuple[int, dict[str, Any]]] = []
        self.first: dict[str, Any] | None = None

    async def wait_first(self) -> dict[str, Any]:
        self._first_batch = await asyncio.wait_for(anext(self._batches), FIRST_EVENT_TIMEOUT_SECONDS)
        self.first = self._first_batch[0][1]
        return self.first

    async def batches(self) -> AsyncIterator[list[tuple[int, dict[str, Any]]]]:
        if self._first_batch:
            yield self._first_batch
        async for batch in self._batches:
            yield batch

    async def __aiter__(self) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        async for batch in self.batches():
            for item in batch:
                yield item

    async def cancel(self) -> None:
        await cancel_job(self.job_id)


class ChoiceEvents:
    """The events of n jobs (one per choice, for `n` > 1) merged as they come; each event gets its "choice".

    Their indexes are renumbered 1, 2, ... in the merged order (a merged stream is not resumable by index).
    """

    def __init__(self, streams: list[JobEvents]):
        self.streams = streams

    async def __aiter__(self) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(choice: int, stream: JobEvents) -> None:
            try:
                async for _index, event in stream:
                    await queue.put({**event, "choice": choice})
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(self.streams)]
        open_streams, index = len(tasks), 0
        try:
            while open_streams:
                event = await queue.get()
                if event is None:
                    open_streams -= 1
                    continue
                index += 1
                yield index, event
        finally:
            for task in tasks:
                task.cancel()

    async def batches(self) -> AsyncIterator[list[tuple[int, dict[str, Any]]]]:
        async for item in self:
            yield [item]

    async def cancel(self) -> None:
        for stream in self.streams:
            await stream.cancel()


async def collect(events: JobEvents) -> JobOutcome:
    outcome = JobOutcome()
    async for _index, event in events:
        outcome.apply(event)
    return outcome


def sse_response(
    events: JobEvents | ChoiceEvents, render: Callable[[int, dict[str, Any], JobOutcome], list[dict[str, Any]]],
    *, headers: dict[str, str] | None = None,
) -> StreamingHttpResponse:
    """Stream `render(index, event, outcome)`'s chunks as SSE; a client that goes away cancels the job(s).

    `outcome` is that of the event's choice. An error event ends the stream (then [DONE]) and cancels the
    other choices' jobs."""

    async def body() -> AsyncIterator[str]:
        outcomes: dict[int, JobOutcome] = {}
        finished = failed = False
        try:
            async for batch in events.batches():  # one write per list of events, not one per token
                lines = []
                for index, event in batch:
                    outcome = outcomes.setdefault(event.get("choice", 0), JobOutcome())
                    outcome.apply(event)
                    if event["kind"] == "error":
                        payload = error_payload(event.get("message", "Generation failed."),
                                                status=event.get("status", 500), code=event.get("code"))
                        lines.append(f"id: {index}\ndata: {json.dumps(payload)}\n\n")
                        failed = True
                        break
                    for chunk in render(index, event, outcome):
                        lines.append(f"id: {index}\ndata: {json.dumps(chunk, separators=(',', ':'))}\n\n")
                yield "".join(lines)
                if failed:
                    break
            finished = True
            yield "data: [DONE]\n\n"
        finally:
            if not finished or (failed and isinstance(events, ChoiceEvents)):
                await asyncio.shield(events.cancel())

    response = StreamingHttpResponse(body(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def now() -> int:
    return int(time.time())
