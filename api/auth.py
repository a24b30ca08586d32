"""Bearer API keys for /v1. The auth callback returns the key (its owner is key.owner); None gives 401.

Authentication also applies the checks that come before reading the body: its size (413) and the key's
requests-per-minute limit (429). Each raises `Refused`, which the API answers with the response it carries.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from ninja.security import HttpBearer

from api.errors import error_response
from api.limits import check_request_rate
from api.models import ApiKey


class Refused(Exception):
    def __init__(self, response: HttpResponse):
        super().__init__(response.status_code)
        self.response = response


def max_body_bytes() -> int:
    """HEARTH_MAX_BODY_BYTES, else Django's DATA_UPLOAD_MAX_MEMORY_SIZE (which refuses larger bodies anyway)."""
    configured = getattr(settings, "HEARTH_MAX_BODY_BYTES", None)
    if configured is None:
        from config.env import env_int

        configured = env_int("HEARTH_MAX_BODY_BYTES", settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 2_621_440, minimum=1)
    return int(configured)


def body_too_large(limit: int | None = None) -> HttpResponse:
    limit = limit or max_body_bytes()
    return error_response(f"The request body is larger than this server's limit of {limit} bytes.",
                          status=413, code="request_too_large")


def check_body_size(request) -> None:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > max_body_bytes():
        raise Refused(body_too_large())


class ApiKeyAuth(HttpBearer):
    def __call__(self, request):
        check_body_size(request)
        return super().__call__(request)

    def authenticate(self, request, token: str) -> ApiKey | None:
        key = ApiKey.objects.authenticate(token)
        if key is not None:
            limited = check_request_rate(key)
            if limited is not None:
                raise Refused(limited)
        return key


class AnthropicApiKeyAuth(ApiKeyAuth):
    """Anthropic's clients send the key as `x-api-key: <key>`; `Authorization: Bearer <key>` works as well (litellm,
    proxies). The same keys, body-size check and rate limit; an `x-api-key` header, when sent, is the one read."""

    def __call__(self, request):
        key = request.headers.get("x-api-key")
        if not key:
            return super().__call__(request)
        check_body_size(request)
        return self.authenticate(request, key.strip())


class StaffApiKeyAuth(ApiKeyAuth):
    """A key whose owner is staff; any other valid key gets 403."""

    def authenticate(self, request, token: str) -> ApiKey | None:
        key = super().authenticate(request, token)
        if key is not None and not key.owner.is_staff:
            raise Refused(error_response("This endpoint is for administrators; your API key's user is not one.",
                                         status=403, code="insufficient_permissions"))
        return key
