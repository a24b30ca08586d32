"""What a worker does with one job: claim it, load the model, stream events to the relay, record the result.

The job row is written when claimed and once when finished, before the terminal event goes out, so a
client that has seen "done" or "error" finds the row final.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from inference.engine.base import EngineError
from inference.engine.registry import ModelCache
from inference.models import GenerationJob, JobStatus
from inference.relay import get_relay
from inference.selection import job_needs, select_and_load
from inference.specs import request_from_json

log = logging.getLogger(__name__)

MODEL_CACHE = ModelCache(settings.HEARTH_MODEL_MEMORY_BUDGET)


def _claim(job_id: str, hostname: str) -> GenerationJob | None:
    """Move a queued job to running; None when it was cancelled or taken meanwhile."""
    claimed = GenerationJob.objects.filter(id=job_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, started_at=timezone.now(), worker=hostname
    )
    return GenerationJob.objects.select_related("model").get(id=job_id) if claimed else None


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


def run_generation_job(job_id: str, hostname: str = "") -> None:
    close_old_connections()
    job = _claim(job_id, hostname)
    if job is None:
        return
    if job.kind == GenerationJob.Kind.EMBEDDING:
        run_embedding_job(job)
        return
    relay = get_relay()
    publisher = relay.publisher(str(job.id))
    text_parts: list[str] = []
    fields: dict[str, Any] = {}
    terminal: dict[str, Any] = {}
    backend = None
    try:
        selection = _select(job)
        backend, loaded = selection.backend, selection.loaded
        fields.update(backend=backend, fallbacks=selection.fallbacks)
        events = loaded.generate(request_from_json(job.request), should_stop=lambda: relay.is_cancelled(str(job.id)))
        for event in events:
            if event.kind == "done":
                terminal = event.to_dict()
                cancelled = event.finish_reason == "cancelled"
                fields.update(
                    status=JobStatus.CANCELLED if cancelled else JobStatus.SUCCEEDED,
                    finish_reason=event.finish_reason or "",
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    time_to_first_token=event.time_to_first_token,
                    tokens_per_second=event.tokens_per_second,
                )
                break
            if event.kind == "token":
                text_parts.append(event.text)
            payload = event.to_dict()
            if event.kind == "started":
                payload.update(backend=backend, fallbacks=selection.fallbacks)
            publisher.publish(payload)
        else:
            raise EngineError("The backend ended without a result.", code="backend_error")
    except Exception as error:
        failure_fields, terminal = _failure(error, backend)
        fields.update(failure_fields)
    GenerationJob.objects.filter(id=job.id).update(
        output_text="".join(text_parts), finished_at=timezone.now(), **fields
    )
    publisher.publish(terminal)


def run_embedding_job(job: GenerationJob) -> None:
    """An embedding job: "started", then "done" carrying the vectors (request {"input": [texts]})."""
    relay = get_relay()
    publisher = relay.publisher(str(job.id))
    fields: dict[str, Any] = {}
    try:
        selection = _select(job)
        loaded = selection.loaded
        fields.update(backend=selection.backend, fallbacks=selection.fallbacks)
        publisher.publish({"kind": "started", "backend": selection.backend, "fallbacks": selection.fallbacks,
                           "prompt_tokens": 0})
        result = loaded.embed(job.request.get("input") or [], should_stop=lambda: relay.is_cancelled(str(job.id)))
        fields.update(status=JobStatus.SUCCEEDED, finish_reason="stop", prompt_tokens=result.prompt_tokens)
        terminal = {"kind": "done", "finish_reason": "stop", "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": 0, "embeddings": result.vectors, "dimensions": loaded.dimensions}
    except Exception as error:
        failure_fields, terminal = _failure(error, "llamacpp")
        fields.update(failure_fields)
    GenerationJob.objects.filter(id=job.id).update(finished_at=timezone.now(), **fields)
    publisher.publish(terminal)
