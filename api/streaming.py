"""From a job's relay events to OpenAI responses: one JSON answer, or SSE chunks that a client can resume.

Both wait for the job's first event before answering, so a prompt over the context or a backend that cannot
load still gets a proper status code (400, 503, ...) instead of a 200 that carries an error. A client that hangs
up meanwhile (its job still queued) cancels the job.

SSE event ids are unique and increasing: the chunks of relay event N have the ids "N", "N.1", "N.2", ... A client
that reconnects with `Last-Event-ID` (docs/api.md: GET /v1/chat/completions/{id}?stream=true) gets every later
chunk of the same job: the events are replayed from the relay, rendered the same way, and written from the first
id after the one it saw.

A job's events are those of inference/worker.py: a job of one choice has "started", "token"s and "done"; a job of
n choices tags each of its events with "choice", ends each choice with a "choice_end" and ends with a "done" that
carries "choices" (n) and the usage of all. `Answer` adds them up, per choice and for the usage.
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
from inference.following import follow
from inference.models import GenerationJob
from inference.relay import RelayUnavailable, get_relay, relay_unavailable_event

FIRST_EVENT_TIMEOUT_SECONDS = 900
RECONNECT_MS = 1000

Numbered = tuple[int, dict[str, Any]]


@dataclass
class JobOutcome:
    """What the events of one choice add up to."""

    text: str = ""
    finish_reason: str | None = None
    stop_sequence: str | None = None  # the stop string that ended the text, when one did
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    backend: str = ""
    error: dict[str, Any] | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # per token, when the request asked for them

    def apply(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "started":
            self.prompt_tokens = event.get("prompt_tokens", 0)
            self.cached_tokens = event.get("cached_tokens", 0)
            self.backend = event.get("backend", "")
        elif kind == "token":
            self.text += event.get("text", "")
            self.completion_tokens += len(event.get("ids") or ()) or 1
            self.logprobs.extend(event.get("logprobs") or ())
        elif kind in ("done", "choice_end"):
            self.finish_reason = event.get("finish_reason") or "stop"
            self.stop_sequence = event.get("stop_sequence")
            self.prompt_tokens = event.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = event.get("completion_tokens", self.completion_tokens)
            self.cached_tokens = event.get("cached_tokens", self.cached_tokens)
            self.timings = {k: event.get(k) for k in ("time_to_first_token", "tokens_per_second")}
        elif kind == "error":
            self.error = event



def ends_a_choice(event: dict[str, Any]) -> bool:
    """A "choice_end", or the "done" of a job of one choice (the end of its only choice too)."""
    return event["kind"] == "choice_end" or (event["kind"] == "done" and "choices" not in event)


@dataclass
class Answer:
    """What the events of an answer's jobs add up to: each choice's outcome (by its index) and the usage of
    every job (each job's prompt counted once)."""

    choices: dict[int, JobOutcome] = field(default_factory=dict)
    jobs_done: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    error: dict[str, Any] | None = None

    def apply(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "error":
            self.error = event
            return
        if kind == "done":
            self.jobs_done += 1
            self.prompt_tokens += event.get("prompt_tokens", 0)
            self.completion_tokens += event.get("completion_tokens", 0)
            self.cached_tokens += event.get("cached_tokens", 0)
        if kind != "done" or ends_a_choice(event):
            self.choice(event.get("choice", 0)).apply(event)

    def choice(self, index: int) -> JobOutcome:
        return self.choices.setdefault(index, JobOutcome())

    def in_order(self) -> list[JobOutcome]:
        return [self.choices[index] for index in sorted(self.choices)] or [JobOutcome()]

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cached_tokens": self.cached_tokens}


def error_event_response(event: dict[str, Any]):
    retry_after = event.get("retry_after")
    return error_response(event.get("message", "Generation failed."), status=event.get("status", 500),
                          code=event.get("code"), headers={"Retry-After": str(retry_after)} if retry_after else None)


async def cancel_job(job_id: str) -> None:
    from inference.services import generation_cancel

    job = await GenerationJob.objects.aget(id=job_id)
    await sync_to_async(generation_cancel)(job)


class JobEvents:
    """A job's events with the first one awaited up front, read in lists paced by HEARTH_STREAM_INTERVAL_MS.

    `batches()` also yields an empty list every few seconds while nothing arrives (for keep-alives); a relay that
    stays unreachable ends the events with an error event (503)."""

    def __init__(self, job_id: str, after: int = 0):
        self.job_id = str(job_id)
        interval = settings.HEARTH_STREAM_INTERVAL_MS / 1000
        self._batches = follow(self.job_id, after, interval=interval)
        self._first_batch: list[Numbered] = []
        self._ended = False
        self._last_index = after
        self.first: dict[str, Any] | None = None

    async def _next(self) -> list[Numbered]:
        try:
            batch = await anext(self._batches)
        except RelayUnavailable as error:
            self._ended = True
            return [(self._last_index + 1, relay_unavailable_event(error))]
        except StopAsyncIteration:
            self._ended = True
            return []
        if batch:
            self._last_index = batch[-1][0]
            self._ended = batch[-1][1]["kind"] in ("done", "error")
        return batch

    async def wait_first(self) -> dict[str, Any]:
        """The first event; a client that hangs up meanwhile cancels the job."""
        try:
            async with asyncio.timeout(FIRST_EVENT_TIMEOUT_SECONDS):
                while not self._first_batch:
                    self._first_batch = await self._next()
        except (asyncio.CancelledError, TimeoutError):
            await asyncio.shield(self.cancel())
            raise
        self.first = self._first_batch[0][1]
        return self.first

    async def batches(self) -> AsyncIterator[list[Numbered]]:
        if self._first_batch:
            yield self._first_batch
        while not self._ended:
            yield await self._next()

    async def __aiter__(self) -> AsyncIterator[Numbered]:
        async for batch in self.batches():
            for item in batch:
                yield item

    async def cancel(self) -> None:
        await cancel_job(self.job_id)

    async def hang_up(self) -> None:
        """The client went away mid-stream: its job goes on for HEARTH_RESUME_GRACE_SECONDS, for the client to
        come back with Last-Event-ID; nobody back by then, the worker stops it."""
        await sync_to_async(get_relay().watch)(self.job_id, settings.HEARTH_RESUME_GRACE_SECONDS)


class ChoiceEvents:
    """The events of several prompts' jobs (a completion's list of prompts), each of `n` choices, merged as they
    come; each event's "choice" becomes prompt × n + its choice in its job.

    Their indexes are renumbered 1, 2, ... in the merged order (a merged stream is not resumable by index).
    """

    def __init__(self, streams: list[JobEvents], n: int = 1):
        self.streams = streams
        self.n = n

    async def __aiter__(self) -> AsyncIterator[Numbered]:
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(prompt: int, stream: JobEvents) -> None:
            try:
                async for _index, event in stream:
                    await queue.put({**event, "choice": prompt * self.n + event.get("choice", 0)})
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

    async def batches(self) -> AsyncIterator[list[Numbered]]:
        async for item in self:
            yield [item]

    async def cancel(self) -> None:
        for stream in self.streams:
            await stream.cancel()

    async def hang_up(self) -> None:
        for stream in self.streams:
            await stream.hang_up()


async def collect(events: JobEvents | ChoiceEvents) -> Answer:
    answer = Answer()
    async for _index, event in events:
        answer.apply(event)
    return answer


def parse_event_id(value: str | None) -> tuple[int, int]:
    """An SSE id ("N" or "N.k") as (N, k); anything else as (0, -1): from the start."""
    if not value:
        return 0, -1
    head, _, tail = value.strip().partition(".")
    try:
        return int(head), int(tail) if tail else 0
    except ValueError:
        return 0, -1


Renderer = Callable[[int, dict[str, Any], Answer], list[dict[str, Any]]]


def _openai_error(event: dict[str, Any]) -> dict[str, Any]:
    return error_payload(event.get("message", "Generation failed."), status=event.get("status", 500),
                         code=event.get("code"))


@dataclass(frozen=True)
class Framing:
    """How a dialect writes a stream: its content type, how a payload is framed (`frame(event_id, payload)`),
    what ends the stream, a keep-alive, and the payload of an error event."""

    content_type: str
    frame: Callable[[str, dict[str, Any]], str]
    end: str = ""
    keep_alive: str = ""
    error: Callable[[dict[str, Any]], dict[str, Any]] = _openai_error
    reconnect: bool = True  # an SSE stream tells the client how soon to reconnect


def _data_line(event_id: str, payload: dict[str, Any]) -> str:
    return f"id: {event_id}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _typed_event(event_id: str, payload: dict[str, Any]) -> str:
    return f"event: {payload.get('type', 'message')}\n" + _data_line(event_id, payload)


OPENAI_SSE = Framing("text/event-stream", _data_line, end="data: [DONE]\n\n", keep_alive=": keep-alive\n\n")


def typed_sse(error: Callable[[dict[str, Any]], dict[str, Any]]) -> Framing:
    """SSE whose events are named by their payload's "type" (the Responses API, Anthropic Messages)."""
    return Framing("text/event-stream", _typed_event, keep_alive=": keep-alive\n\n", error=error)


def ndjson(error: Callable[[dict[str, Any]], dict[str, Any]]) -> Framing:
    """One JSON object per line (Ollama): no ids, no keep-alive (a blank line is not JSON)."""
    return Framing("application/x-ndjson", lambda _id, payload: json.dumps(payload, separators=(",", ":")) + "\n",
                   error=error, reconnect=False)


def sse_response(events: JobEvents | ChoiceEvents, render: Renderer, *, headers: dict[str, str] | None = None,
                 resume_after: tuple[int, int] = (0, -1), hang_up: bool = True, framing: Framing = OPENAI_SSE
                 ) -> StreamingHttpResponse:
    """Stream `render(index, event, answer)`'s chunks (SSE ids "N", "N.1", ...), writing only those after
    `resume_after`, framed as the dialect writes them (`framing`, OpenAI's by default). A client that goes away
    leaves its job a short grace to come back (`hang_up`).

    `answer` holds every event up to this one. An error event ends the stream (then the framing's end) and
    cancels the other prompts' jobs."""

    def framed(index: int, part: int, payload: dict[str, Any]) -> str:
        if (index, part) <= resume_after:
            return ""
        return framing.frame(f"{index}.{part}" if part else str(index), payload)

    async def body() -> AsyncIterator[str]:
        answer = Answer()
        finished = failed = False
        # The first event carries `retry:` (an EventSource that loses the connection is back well within the
        # grace); a block of its own would reach OpenAI's client as an event with empty data.
        retry = f"retry: {RECONNECT_MS}\n" if framing.reconnect else ""
        try:
            async for batch in events.batches():  # one write per list of events, not one per token
                if not batch:
                    if framing.keep_alive:
                        yield framing.keep_alive
                    continue
                lines = []
                for index, event in batch:
                    answer.apply(event)
                    if event["kind"] == "error":
                        lines.append(framed(index, 0, framing.error(event)))
                        failed = True
                        break
                    for part, chunk in enumerate(render(index, event, answer)):
                        lines.append(framed(index, part, chunk))
                text = "".join(lines)
                if text:
                    yield retry + text
                    retry = ""
                if failed:
                    break
            finished = True
            if framing.end:
                yield framing.end
        finally:
            if failed and isinstance(events, ChoiceEvents):
                await asyncio.shield(events.cancel())  # one prompt's job failed: the others stop
            elif not finished and hang_up:
                await asyncio.shield(events.hang_up())

    response = StreamingHttpResponse(body(), content_type=framing.content_type)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def now() -> int:
    return int(time.time())
