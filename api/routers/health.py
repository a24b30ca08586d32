"""GET /health: database, broker and worker state, for people and for docker healthchecks."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from ninja import Router

from inference.presence import CONVERTER, PULLER, get_presence
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


def _converters(broker: str, role: str = CONVERTER) -> dict:
    if settings.HEARTH_EMBEDDED_WORKER:
        return {"embedded": True}
    names = get_presence(role).live_workers() if broker.startswith("ok") else []
    return {"alive": len(names), "names": names}


def _names_shown(request: HttpRequest, database: str) -> set[str]:
    """The models /health may name to this caller (anyone may read it): those a logged-in user may use, to anyone
    else those open to everyone; none while the database is out (inference/access.py)."""
    if database != "ok":
        return set()
    from inference.access import models_usable_by
    from inference.models import LocalModel

    user = getattr(request, "user", None)
    models = models_usable_by(user) if user is not None and user.is_authenticated else \
        LocalModel.objects.filter(open_to_everyone=True)
    return set(models.values_list("name", flat=True))


def _named(model: dict, shown: set[str]) -> dict:
    """A loaded model's entry ("model": "<name> (<backend>)"), without the name when the caller may not know it."""
    name = str(model.get("model", "")).rsplit(" (", 1)[0]
    return model if name in shown else {k: v for k, v in model.items() if k != "model"}


@router.get("/health", summary="Server health")
def health(request: HttpRequest):
    database, broker = _database_state(), _broker_state()
    workers = get_presence().live_workers() if broker.startswith("ok") else []
    engine = get_presence().engine_stats() if workers else {}
    shown = _names_shown(request, database) if engine else set()
    healthy = database == "ok" and broker.startswith("ok") and bool(workers)
    body = {
        "status": "ok" if healthy else "degraded",
        "mode": "production" if settings.PRODUCTION else "embedded",
        "database": database,
        "broker": broker,
        "workers": {"alive": len(workers), "names": workers},
        # Model conversions run apart (the "conversions" queue); the embedded mode converts in its own thread.
        "converters": _converters(broker),
        "pullers": _converters(broker, PULLER),  # pulls from the Hugging Face Hub: the "pulls" queue
        # Per worker, per loaded model: slots (sequences decoded together), running, waiting, cached; the model's
        # name only where the caller may know it (_names_shown).
        "engine": [{"worker": name, **_named(model, shown)} for name, models in sorted(engine.items())
                   for model in models],
        "queued_jobs": queued_count() if database == "ok" else None,
    }
    return JsonResponse(body, status=200 if healthy else 503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
def metrics(request: HttpRequest):
    """Prometheus' text format. With HEARTH_METRICS_TOKEN set, send it as `Authorization: Bearer <token>`;
    otherwise an administrator's session reads it."""
    import secrets

    from django.http import HttpResponse
    from prometheus_client import CONTENT_TYPE_LATEST

    from api.errors import error_response
    from inference.metrics import exposition

    token = settings.HEARTH_METRICS_TOKEN
    sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    allowed = (secrets.compare_digest(sent, token) if token and sent
               else bool(getattr(request, "user", None) and request.user.is_active and request.user.is_staff))
    if not allowed:
        return error_response("Metrics need HEARTH_METRICS_TOKEN as a bearer token, or an administrator's login.",
                              status=401, code="invalid_api_key")
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
