"""GET /health: database, broker and worker state, for people and for docker healthchecks."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from ninja import Router

from inference.presence import get_presence
from inference.selectors import queued_count

router = Router(tags=["Health"])


def _database_state() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as error:
        return f"error: {error}"


def _broker_state() -> str:
    if not settings.REDIS_URL:
        return "ok (in-process)"
    try:
        import redis

        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2).ping()
        return "ok"
    except Exception as error:
        return f"error: {error}"


@router.get("/health", summary="Server health")
def health(request: HttpRequest):
    database, broker = _database_state(), _broker_state()
    workers = get_presence().live_workers() if broker.startswith("ok") else []
    healthy = database == "ok" and broker.startswith("ok") and bool(workers)
    body = {
        "status": "ok" if healthy else "degraded",
        "mode": "production" if settings.PRODUCTION else "embedded",
        "database": database,
        "broker": broker,
        "workers": {"alive": len(workers), "names": workers},
        "queued_jobs": queued_count() if database == "ok" else None,
    }
    return JsonResponse(body, status=200 if healthy else 503)
