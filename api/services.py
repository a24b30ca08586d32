"""Writes of the api app: queueing an embedding job (the same worker queue, limits and accounting as generations)."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from inference.models import GenerationJob, JobStatus, LocalModel
from inference.presence import get_presence
from inference.services import NoWorkerAvailable, QueueFull, _send_generation_task


def embedding_start(*, owner, model: LocalModel, inputs: list[str], api_key=None) -> GenerationJob:
    """Queue an embedding job; 503 when no worker is alive, 429 when the queue is full (as generation_start)."""
    if not get_presence().live_workers():
        raise NoWorkerAvailable(
            "No generation worker is running. Start one (make run starts one; in production: "
            "celery -A config worker -Q generation --concurrency 1) and try again."
        )
    queued = GenerationJob.objects.filter(status=JobStatus.QUEUED).count()
    if queued >= settings.HEARTH_MAX_QUEUED:
        raise QueueFull(f"{queued} jobs are already waiting; try again in a few seconds.")
    job = GenerationJob.objects.create(owner=owner, api_key=api_key, model=model, model_name=model.name,
                                       kind=GenerationJob.Kind.EMBEDDING, request={"input": inputs})
    job_id = str(job.id)
    transaction.on_commit(lambda: _send_generation_task(job_id))
    return job
