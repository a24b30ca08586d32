"""Reads used by views and the API."""

from __future__ import annotations

from inference.models import GenerationJob, JobStatus, LocalModel


# The whole library, for the system (commands, workers). What a person may list or name goes through
# inference/access.py (models_usable_by, model_for) instead.
def model_list():
    return LocalModel.objects.all()


def model_by_name(name: str) -> LocalModel | None:
    return LocalModel.objects.filter(name=name).first()


def jobs_for(user):
    jobs = GenerationJob.objects.select_related("model", "owner")
    return jobs if user.is_staff else jobs.filter(owner=user)


def queued_count() -> int:
    return GenerationJob.objects.filter(status=JobStatus.QUEUED).count()
