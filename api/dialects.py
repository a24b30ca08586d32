"""Each dialect's error shape, applied at the edge.

Everything behind the endpoints (authentication, body and rate limits, validation, model lookup, the worker's
error events) answers in OpenAI's error envelope, the one internal shape. A request under another dialect's
root gets the same error in that dialect's shape: this middleware rewrites the JSON error responses of those
paths with the dialect's `error_body(status, openai_error) -> payload` (headers such as Retry-After and
x-ratelimit-* are kept). Streams carry their errors in their own framing (api/streaming.py `Framing.error`).

DIALECTS lists (path prefix, "module:function"), most specific first; a path under none of them is OpenAI's, and so
is one whose first match names no function ("").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib import import_module
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, JsonResponse

ErrorBody = Callable[[int, dict[str, Any]], dict[str, Any]]

DIALECTS: tuple[tuple[str, str], ...] = (
    ("/v1/messages", "api.schemas.anthropic:error_body"),
    ("/api/docs", ""),  # the API's own documentation: not a dialect ("" = OpenAI's shape, unchanged)
    ("/api/openapi.json", ""),
    ("/api/", "api.schemas.ollama:error_body"),
)


@cache
def _error_body(target: str) -> ErrorBody:
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


def error_body_for(path: str) -> ErrorBody | None:
    """The error shape of the dialect that `path` belongs to; None for OpenAI's own."""
    for prefix, target in DIALECTS:
        if path.startswith(prefix):
            return _error_body(target) if target else None
    return None


def in_dialect(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """`response` as the dialect of `request.path` writes errors (unchanged when it is not an OpenAI error)."""
    if response.status_code < 400 or getattr(response, "streaming", False):
        return response
    shape = error_body_for(request.path)
    if shape is None or not response.get("Content-Type", "").startswith("application/json"):
        return response
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        return response
    if not isinstance(error, dict):
        return response
    translated = JsonResponse(shape(response.status_code, error), status=response.status_code)
    for name, value in response.items():
        if name.lower() not in ("content-type", "content-length"):
            translated[name] = value
    return translated


class DialectErrorsMiddleware:
    sync_capable = async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        return in_dialect(request, self.get_response(request))

    async def _acall(self, request):
        return in_dialect(request, await self.get_response(request))
