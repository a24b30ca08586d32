"""Reads of the api app: keys with their usage, summed from the generation jobs each key started."""

from __future__ import annotations

from django.db.models import Count, Max, Q, QuerySet, Sum
from django.db.models.functions import Coalesce

from api.models import ApiKey


def keys_with_usage(owner=None) -> QuerySet[ApiKey]:
    """Keys (an owner's, or everyone's) annotated with requests, prompt_tokens, completion_tokens, last_job_at.

    Tokens count jobs that ran (succeeded, cancelled part-way or failed after starting): what the model processed.
    """
    keys = ApiKey.objects.select_related("owner")
    if owner is not None:
        keys = keys.filter(owner=owner)
    return keys.annotate(
        requests=Count("jobs"),
        prompt_tokens=Coalesce(Sum("jobs__prompt_tokens"), 0),
        completion_tokens=Coalesce(Sum("jobs__completion_tokens"), 0),
        active_jobs=Count("jobs", filter=Q(jobs__status__in=("queued", "running"))),
        last_job_at=Max("jobs__created_at"),
    )


def key_usage_dict(key: ApiKey) -> dict:
    return {
        "id": key.pk,
        "prefix": key.display,
        "name": key.name,
        "owner": key.owner.get_username(),
        "created": int(key.created_at.timestamp()),
        "last_used": int(key.last_used_at.timestamp()) if key.last_used_at else None,
        "revoked": int(key.revoked_at.timestamp()) if key.revoked_at else None,
        "requests_per_minute": key.requests_per_minute,
        "max_concurrent_jobs": key.max_concurrent_jobs,
        "usage": {
            "requests": key.requests,
            "prompt_tokens": key.prompt_tokens,
            "completion_tokens": key.completion_tokens,
            "total_tokens": key.prompt_tokens + key.completion_tokens,
        },
    }
