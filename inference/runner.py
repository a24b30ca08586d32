"""What a worker's task thread does with a job: claim one under a lease, prepare it, hand it to the engine, and
record the result.

The job a task takes is the queued one whose turn it is (inference/leases.py: users in turn, then the oldest),
not necessarily the one its message named: Celery delivers one message per job, so every job is taken once.
The row is written when claimed and once at the end, before the terminal event goes out, so a client that has
seen "done" or "error" finds the row final.

A job whose stream already has events was started by a worker that died (or shut down): this one claims the
stream, replays the token ids those events carry through a fresh OutputProcessor (same text, same held-back
characters), re-reads the prompt and those tokens, and continues from the next index. Its subscribers see one
stream with no gap and no duplicate. A job of n choices is replayed choice by choice (the events of each carry
its "choice"), and only the choices that had not ended go on.

The row keeps the first choice's text as `output_text` (the others are in the stream while it is kept) and the
job's usage: the prompt counted once, the completion tokens of every choice summed.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from inference import metrics
from inference.engine.base import EngineError, choice_request
from inference.engine.output import OutputProcessor
from inference.engine.prompts import prepare_prompt
from inference.engine.registry import ModelCache
from inference.engine.scheduler import Sequence
from inference.leases import claim_next
from inference.models import GenerationJob, JobStatus
from inference.relay import RELAY_OUTAGE_SECONDS, StreamLost, get_relay, is_terminal
from inference.selection import job_needs, select_and_load
from inference.specs import request_from_json
from inference.usage import job_ended
from inference.worker import Choice, Engine, JobRun

log = logging.getLogger(__name__)
SHUTDOWN_WAIT_SECONDS = 5

WAIT_POLL_SECONDS = 1.0
DATABASE_OUTAGE_SECONDS = 60


class Held:
    """The jobs this process holds (claimed, not yet finished): what its heartbeat renews the leases of."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()

    def add(self, job_id: str) -> None:
        with self._lock:
            self._ids.add(job_id)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._ids.discard(job_id)

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._ids)


HELD = Held()


class _Identity:
    name = ""


def name_worker(hostname: str) -> str:
    """Name this process (at worker start): its name in the heartbeats and on the jobs it holds, unique per
    process start, so a worker restarted under the same host name is not mistaken for the one that died."""
    _Identity.name = f"{hostname or socket.gethostname()}#{secrets.token_hex(3)}"
    return _Identity.name


def worker_name() -> str:
    return _Identity.name or name_worker("")


@cache
def engine() -> Engine:
    return Engine(get_relay(), chunk_tokens=settings.HEARTH_PREFILL_CHUNK_TOKENS,
                  cache_bytes=settings.HEARTH_KV_CACHE_BYTES, slots=settings.HEARTH_WORKER_SLOTS)


MODEL_CACHE = ModelCache(settings.HEARTH_MODEL_MEMORY_BUDGET, is_busy=lambda model: engine().busy(model),
                         on_evict=lambda model: engine().forget(model))


def _failure(error: BaseException, backend: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    if isinstance(error, EngineError):
        code, status, message = error.code, error.status, error.message
    else:
        log.error("generation failed", exc_info=error)
        code, status = "backend_error", 500
        message = (
            f"The {backend or 'selected'} backend failed: {type(error).__name__}: {error}. Try again; if it keeps "
            "failing, check the worker log or choose another backend for this model."
        )
    fields = {"status": JobStatus.FAILED, "error_code": code, "error_text": message}
    return fields, {"kind": "error", "code": code, "status": status, "message": message}


def _select(job: GenerationJob):
    """The backend that serves `job`, its model loaded (the selection with every fallback step)."""
    if job.model is None:
        raise EngineError(f"The model {job.model_name!r} was deleted from the library.",
                          code="model_not_found", status=404)
    return select_and_load(MODEL_CACHE, job.model, job.request.get("backend"), job_needs(job.kind, job.request))


class _Lifecycle:
    shutting_down = False


def run_next_job(worker: str) -> None:
    """The task: take the job whose turn it is (if any is still queued) and run it to its end."""
    if _Lifecycle.shutting_down:
        return  # the message is acknowledged; the job stays queued for the other workers
    close_old_connections()
    try:
        job = claim_next(worker)
        if job is None:
            return
        HELD.add(str(job.id))
        metrics.observe_claim((job.started_at - job.created_at).total_seconds(), job.model_name)
        try:
            if job.request.get("residency"):
                run_residency_job(job, worker)
            elif job.kind == GenerationJob.Kind.EMBEDDING:
                run_embedding_job(job, worker)
            else:
                run_generation_job(job, worker)
        finally:
            HELD.discard(str(job.id))
    finally:
        close_old_connections()


def _finish_row(job: GenerationJob, worker: str, **fields) -> bool:
    """Write the job's final row, if the job is still this worker's; False when it is not (taken over). A model's
    text may hold NUL characters, which PostgreSQL's text cannot: they are stored as U+FFFD."""
    for name in ("output_text", "error_text"):
        if isinstance(fields.get(name), str):
            fields[name] = fields[name].replace("\x00", "\ufffd")
    def write() -> int:
        with transaction.atomic():  # the row, the quota settlement and the usage rollup: together or not at all
            ended = GenerationJob.objects.filter(id=job.id, worker=worker, status=JobStatus.RUNNING).update(
                finished_at=timezone.now(), lease_expires_at=None, **fields)
            if ended:
                job_ended(job.id)
            return ended

    written = _with_database(write)
    if written:
        metrics.observe_finished(
            status=fields["status"], model=job.model_name, backend=fields.get("backend") or "",
            prompt_tokens=fields.get("prompt_tokens", 0), completion_tokens=fields.get("completion_tokens", 0),
            cached_tokens=fields.get("cached_tokens", 0), time_to_first_token=fields.get("time_to_first_token"),
            tokens_per_second=fields.get("tokens_per_second"))
    return written


def _with_database(write, patience: float = DATABASE_OUTAGE_SECONDS):
    """Run a write, waiting out a database restart of up to `patience` seconds (the job's end is not lost)."""
    from inference.outages import outage_seen

    deadline = time.monotonic() + patience
    while True:
        try:
            return write()
        except Exception as error:
            if outage_seen(error) is None or time.monotonic() > deadline:
                raise
            close_old_connections()
            time.sleep(1.0)


def _publish_with_retry(publish, *args) -> bool:
    """Publish through a relay outage of up to RELAY_OUTAGE_SECONDS; False when the stream is lost or the relay
    stays down."""
    deadline = time.monotonic() + RELAY_OUTAGE_SECONDS
    while True:
        try:
            publish(*args)
            return True
        except StreamLost:
            return False
        except Exception:
            if time.monotonic() > deadline:
                log.exception("the relay stayed unreachable; an event was not published")
                return False
            time.sleep(0.5)


def run_generation_job(job: GenerationJob, worker: str) -> None:
    relay = get_relay()
    existing = relay.claim(str(job.id), worker)
    if existing and is_terminal(existing[-1][1]):
        _settle_from_stream(job, worker, existing)
        return
    publisher = relay.publisher(str(job.id), worker, after=existing[-1][0] if existing else 0)
    backend = None
    try:
        selection = _select(job)
        backend, model = selection.backend, selection.loaded
        request = request_from_json(job.request)
        if request.max_tokens == 0:  # only the prompt's length is asked for (Anthropic's count_tokens)
            _count_prompt(job, worker, publisher, selection, model, request)
            return
        prompt = prepare_prompt(model, request)
        started = {"dropped_messages": prompt.dropped_messages, "backend": backend, "fallbacks": selection.fallbacks}
        choices = _choices(job, model, request, prompt, _sent_per_choice(existing), started)
    except Exception as error:
        fields, terminal = _failure(error, backend)
        if _finish_row(job, worker, **fields):
            _publish_with_retry(publisher.publish, terminal)
        return
    run = JobRun(job_id=str(job.id), choices=choices, publisher=publisher)
    try:
        run.end_exhausted()  # choices whose earlier worker sent every token they may: only their end is missing
        if run.terminal is None:
            try:
                engine().submit(run, model, label=f"{job.model_name} ({backend})")
            except RuntimeError:  # the worker is shutting down: the job goes back to the queue
                from inference.leases import hand_back

                hand_back(str(job.id), worker)
                return
            while not run.finished.wait(WAIT_POLL_SECONDS):
                pass
    finally:
        for choice in choices:
            if choice.sequence is not None:
                choice.sequence.sampler.close()
    if run.abandoned:
        log.info("job %s: no longer this worker's (%s)", job.id, run.abandoned)
        return
    _publish_with_retry(run.flush)
    terminal = run.terminal or {"kind": "error", "exception": EngineError("The backend ended without a result.")}
    if terminal["kind"] == "error":
        fields, terminal = _failure(terminal["exception"], backend)
    else:
        cancelled = terminal["finish_reason"] == "cancelled"
        fields = {
            "status": JobStatus.CANCELLED if cancelled else JobStatus.SUCCEEDED,
            "finish_reason": terminal["finish_reason"],
            "prompt_tokens": terminal["prompt_tokens"],
            "completion_tokens": terminal["completion_tokens"],
            "cached_tokens": terminal.get("cached_tokens", 0),
            "time_to_first_token": terminal.get("time_to_first_token"),
            "tokens_per_second": terminal.get("tokens_per_second"),
        }
        if run.stop_reason == "client gone":
            fields["error_text"] = "Stopped: nobody was following it any more (its page or connection closed)."
    fields.update(backend=backend, fallbacks=selection.fallbacks, output_text=choices[0].processor.text)
    if _finish_row(job, worker, **fields):
        _publish_with_retry(publisher.publish, terminal)


def _count_prompt(job: GenerationJob, worker: str, publisher, selection, model, request) -> None:
    """A job of max_tokens 0: the prompt as the chat template renders it, tokenized, is the whole answer (one
    "done" event with its prompt_tokens, ended by its budget: "length"); nothing is decoded. The row records no
    token usage: the model read nothing."""
    count = len(model.tokenize(model.render_prompt(request)))
    if _finish_row(job, worker, status=JobStatus.SUCCEEDED, finish_reason="length", backend=selection.backend,
                   fallbacks=selection.fallbacks):
        _publish_with_retry(publisher.publish, {"kind": "done", "finish_reason": "length", "prompt_tokens": count,
                                                "completion_tokens": 0, "backend": selection.backend,
                                                "fallbacks": selection.fallbacks})


@dataclass
class _Sent:
    """What a job's stream already holds of one choice (the job was taken over): its token ids, whether its
    "started" went out, its "choice_end" if it ended."""

    ids: list[int] = field(default_factory=list)
    started: bool = False
    end: dict[str, Any] | None = None


def _sent_per_choice(existing: list) -> dict[int, _Sent]:
    """The events earlier workers published, per choice (a job of one choice: all of them its choice 0's)."""
    sent: dict[int, _Sent] = defaultdict(_Sent)
    for _, event in existing:
        choice = sent[event.get("choice", 0)]
        if event["kind"] == "token":
            choice.ids.extend(event.get("ids", ()))
        elif event["kind"] == "started":
            choice.started = True
        elif event["kind"] == "choice_end":
            choice.end = event
    return sent


def _choices(job: GenerationJob, model, request, prompt, sent: dict[int, _Sent], started: dict[str, Any]
             ) -> list[Choice]:
    """The job's `n` choices, each where its stream left it; their samplers are closed if one cannot be made."""
    choices: list[Choice] = []
    try:
        for index in range(request.n):
            choices.append(_choice(job, model, request, prompt, index, sent[index], started))
    except BaseException:
        for choice in choices:
            if choice.sequence is not None:
                choice.sequence.sampler.close()
        raise
    return choices


def _choice(job: GenerationJob, model, request, prompt, index: int, sent: _Sent, started: dict[str, Any]) -> Choice:
    """Choice `index`: its OutputProcessor replays the token ids already sent (same text, same held-back
    characters); unless it had ended, a sequence of its own (prompt + those ids, its own sampler) that the
    scheduler lets share the prompt's prefill with the job's other choices."""
    processor = OutputProcessor(detokenize=model.detokenize, eog_ids=model.eog_ids,
                                max_new_tokens=prompt.max_new_tokens, stop=request.stop,
                                n_prompt=len(prompt.ids), logprobs=request.logprobs is not None)
    processor.replay(sent.ids)
    if sent.end is not None:
        return Choice(index, processor, end=sent.end)
    tokens = list(prompt.ids) + sent.ids
    sampler = model.sampler(choice_request(request, index), tokens, len(prompt.ids))
    sequence = Sequence(id=f"{job.id}:{index}", user=str(job.owner_id), tokens=tokens, sampler=sampler,
                        n_prompt=len(prompt.ids), group=str(job.id))
    return Choice(index, processor, sequence, started=None if sent.started else processor.started(**started))


def _settle_from_stream(job: GenerationJob, worker: str, events: list) -> None:
    """A job whose stream already ended (its worker died between publishing the end and writing the row)."""
    terminal = events[-1][1]
    text = "".join(event.get("text", "") for _, event in events
                   if event["kind"] == "token" and event.get("choice", 0) == 0)
    if terminal["kind"] == "error":
        fields = {"status": JobStatus.FAILED, "error_code": terminal.get("code", ""),
                  "error_text": terminal.get("message", "")}
    else:
        fields = {"status": JobStatus.CANCELLED if terminal.get("finish_reason") == "cancelled"
                  else JobStatus.SUCCEEDED, "finish_reason": terminal.get("finish_reason", ""),
                  "prompt_tokens": terminal.get("prompt_tokens", 0),
                  "completion_tokens": terminal.get("completion_tokens", 0)}
    _finish_row(job, worker, output_text=text, **fields)


def run_embedding_job(job: GenerationJob, worker: str) -> None:
    """An embedding job: "started", then "done" carrying the vectors (request {"input": [texts]})."""
    relay = get_relay()
    existing = relay.claim(str(job.id), worker)
    publisher = relay.publisher(str(job.id), worker, after=existing[-1][0] if existing else 0)
    fields: dict[str, Any] = {}
    try:
        selection = _select(job)
        loaded = selection.loaded
        fields.update(backend=selection.backend, fallbacks=selection.fallbacks)
        if not existing:
            publisher.publish({"kind": "started", "backend": selection.backend, "fallbacks": selection.fallbacks,
                               "prompt_tokens": 0})
        result = loaded.embed(job.request.get("input") or [], should_stop=lambda: relay.is_cancelled(str(job.id)))
        fields.update(status=JobStatus.SUCCEEDED, finish_reason="stop", prompt_tokens=result.prompt_tokens)
        terminal = {"kind": "done", "finish_reason": "stop", "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": 0, "embeddings": result.vectors, "dimensions": loaded.dimensions}
    except StreamLost:
        return
    except Exception as error:
        failure_fields, terminal = _failure(error, fields.get("backend"))
        fields.update(failure_fields)
    if _finish_row(job, worker, **fields):
        _publish_with_retry(publisher.publish, terminal)


def run_residency_job(job: GenerationJob, worker: str) -> None:
    """Load the job's model ("started" with the backend, then "done" with finish_reason "load"), or unload it from
    this process's cache ("done", "unload"; a model that is decoding stays). Other workers keep their copies."""
    from inference.selection import converted_path

    relay = get_relay()
    existing = relay.claim(str(job.id), worker)
    publisher = relay.publisher(str(job.id), worker, after=existing[-1][0] if existing else 0)
    action = "unload" if job.request.get("residency") == "unload" else "load"
    fields: dict[str, Any] = {"status": JobStatus.SUCCEEDED, "finish_reason": action}
    try:
        if action == "load":
            selection = _select(job)
            fields.update(backend=selection.backend, fallbacks=selection.fallbacks)
            publisher.publish({"kind": "started", "backend": selection.backend, "fallbacks": selection.fallbacks,
                               "prompt_tokens": 0})
        elif job.model is not None:
            MODEL_CACHE.unload({job.model.path, str(converted_path(job.model))})
        terminal = {"kind": "done", "finish_reason": action, "prompt_tokens": 0, "completion_tokens": 0}
    except StreamLost:
        return
    except Exception as error:
        failure_fields, terminal = _failure(error, fields.get("backend"))
        fields.update(failure_fields)
    if _finish_row(job, worker, **fields):
        _publish_with_retry(publisher.publish, terminal)


def shut_down(worker: str) -> int:
    """SIGTERM: stop the engine and hand every job this process holds back to the queue, where another worker
    (or this one, restarted) continues its stream. Returns how many were handed back."""
    from inference.leases import hand_back

    _Lifecycle.shutting_down = True
    held = HELD.ids()
    engine().stop()
    handed = 0
    for job_id in held:
        handed += hand_back(job_id, worker)
    deadline = time.monotonic() + SHUTDOWN_WAIT_SECONDS  # the jobs' threads let go of their samplers first
    while HELD.ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    MODEL_CACHE.clear()
    return handed
