"""Writes: importing models, starting and cancelling generation jobs."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings
from django.db import transaction

from inference import quotas
from inference.engine.backends import find_backend, unknown_backend
from inference.engine.base import EngineError, GenerationRequest, InvalidRequest, ModelRefused
from inference.models import GenerationJob, JobStatus, LocalModel, model_id_validator
from inference.presence import get_presence
from inference.relay import get_relay
from inference.specs import request_to_json

QUEUE_RETRY_AFTER_SECONDS = 2


class QueueFull(EngineError):
    code = "queue_full"
    status = 429

    retry_after = QUEUE_RETRY_AFTER_SECONDS


class NoWorkerAvailable(EngineError):
    code = "no_worker"
    status = 503

    retry_after = 10


def default_model_name(path: Path) -> str:
    stem = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^A-Za-z0-9._:-]+", "-", stem).strip("-._:").lower()
    return name[:128] or "model"


def model_import(path: str | Path, *, name: str | None = None, backend: str = "", actor=None,
                 audit_action: str | None = "model.import") -> LocalModel:
    """Validate a model file or directory and add it to the library. Nothing unvalidated reaches a backend.
    Recorded in the audit trail as `audit_action` by `actor` (None: the system, a command); callers that record
    their own event (a pull, a conversion) pass None."""
    from django.core.exceptions import ValidationError

    from inference.audit import audit_record
    from inference.engine.chat_template import find_chat_template
    from inference.engine.metadata import read_metadata

    source = Path(path).expanduser().resolve()
    if not source.exists():
        raise ModelRefused(f"{source} does not exist.")
    meta = read_metadata(source)
    name = name or default_model_name(source)
    try:
        model_id_validator(name)
    except ValidationError as error:
        raise ModelRefused(f"{name!r} is not a valid model id: {error.messages[0]}") from None
    if backend and find_backend(backend) is None:
        raise ModelRefused(unknown_backend(backend))
    if LocalModel.objects.filter(name=name).exists():
        raise ModelRefused(f"The library already has a model named {name!r}; pass another --name.")
    template, template_source = find_chat_template(str(source), meta.chat_template)
    model = LocalModel.objects.create(
        name=name,
        path=str(source),
        format=meta.format,
        architecture=meta.architecture,
        parameter_count=meta.parameter_count,
        quantization=meta.quantization or "",
        context_length=meta.context_length or 0,
        chat_template=template or "",
        chat_template_source=template_source if template else "",
        size_bytes=meta.size_bytes,
        backend=backend,
        metadata=meta.to_dict(),
    )
    if audit_action:
        audit_record(actor, audit_action, model.name, format=model.format, size_bytes=model.size_bytes)
    return model


def _admit() -> None:
    """Refuse a new job with 503 when no worker is alive and 429 when the queue is full."""
    if not get_presence().live_workers():
        raise NoWorkerAvailable(
            "No generation worker is running. Start one (make run starts one; in production: "
            "celery -A config worker -Q generation --concurrency 1) and try again."
        )
    queued = GenerationJob.objects.filter(status=JobStatus.QUEUED).count()
    if queued >= settings.HEARTH_MAX_QUEUED:
        raise QueueFull(f"{queued} jobs are already waiting; try again in a few seconds.")


def _enqueue(**fields) -> GenerationJob:
    """Write the job row; its task is sent once the row is committed. The job counts as watched until its
    requester starts following it (a job nobody follows is stopped: inference/worker.py)."""
    job = GenerationJob.objects.create(**fields)
    job_id = str(job.id)
    get_relay().watch(job_id)
    transaction.on_commit(lambda: _send_generation_task(job_id))
    return job


def generation_start(
    *, owner, model: LocalModel, request: GenerationRequest, kind: str = GenerationJob.Kind.CHAT,
    backend: str | None = None, api_key=None, response: dict | None = None,
) -> GenerationJob:
    """Queue a generation (503 without a live worker, 429 when the queue is full, the API key runs its limit of
    generations, or a token quota is used up: inference/quotas.py). `response` is the shape of the API's answer,
    kept so that a resumed stream renders the same. The job carries `quota` (the binding QuotaState, or None)."""
    if backend and find_backend(backend) is None:
        raise InvalidRequest(unknown_backend(backend))
    _admit()
    payload = request_to_json(request)
    if backend:
        payload["backend"] = backend
    if response:
        payload["response"] = response
    with transaction.atomic():  # the limits' checks and the job's row: one step for every process
        quotas.check_concurrency_locked(api_key, request.n)
        admission = quotas.admit(owner, api_key, model, request)
        job = _enqueue(owner=owner, api_key=api_key, model=model, model_name=model.name, kind=kind,
                       request=payload)
        quotas.reserve(job.id, admission)
    job.quota = admission.state if admission else None
    return job


def embedding_start(*, owner, model: LocalModel, inputs: list[str], api_key=None) -> GenerationJob:
    """Queue an embedding job: the same worker queue, limits and accounting as generations (its inputs' tokens
    count against the token quotas, estimated as characters ÷ 4 until the job ends)."""
    _admit()
    with transaction.atomic():
        quotas.check_concurrency_locked(api_key, 1)
        admission = quotas.admit(owner, api_key, None, GenerationRequest(prompt="\n".join(inputs), max_tokens=0))
        job = _enqueue(owner=owner, api_key=api_key, model=model, model_name=model.name,
                       kind=GenerationJob.Kind.EMBEDDING, request={"input": inputs})
        quotas.reserve(job.id, admission)
    return job


def model_residency_start(*, owner, model: LocalModel, action: str, kind: str = GenerationJob.Kind.CHAT,
                          api_key=None) -> GenerationJob:
    """Queue a model load or unload ("load" | "unload", Ollama's keep_alive) for the worker that takes it."""
    _admit()
    return _enqueue(owner=owner, api_key=api_key, model=model, model_name=model.name, kind=kind,
                    request={"residency": action})


def _send_generation_task(job_id: str) -> None:
    from inference.tasks import GENERATION_QUEUE, generation_run

    generation_run.apply_async(args=[job_id], queue=GENERATION_QUEUE)


def generation_cancel(job: GenerationJob) -> None:
    """Stop a job: a queued one ends at once, a running one within one token."""
    relay = get_relay()
    relay.request_cancel(str(job.id))
    with transaction.atomic():
        took = GenerationJob.objects.filter(id=job.id, status=JobStatus.QUEUED).update(status=JobStatus.CANCELLED)
        if took:
            from inference.usage import job_ended

            job_ended(job.id)
    if took:
        relay.publish_terminal(str(job.id), {"kind": "done", "finish_reason": "cancelled"})
