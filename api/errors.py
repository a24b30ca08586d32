"""OpenAI's error envelope for every failure the API can answer with."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from config.paths import hide_paths

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


def error_payload(message: str, *, status: int = 400, param: str | None = None, code: str | None = None) -> dict:
    """The envelope; a server file path in `message` is shortened to its last part (config.paths)."""
    return {"error": {"message": hide_paths(message), "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


def error_response(
    message: str, *, status: int = 400, param: str | None = None, code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    response = JsonResponse(error_payload(message, status=status, param=param, code=code), status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


@csrf_exempt  # an API client sends no CSRF token; this view changes nothing
def unknown_api_path(request, *_args) -> JsonResponse:
    """A path under /v1/ that Hearth does not serve: OpenAI's answer (404, "Invalid URL (METHOD /path)"), in JSON,
    so that clients show the reason instead of an HTML page."""
    return error_response(f"Invalid URL ({request.method} {request.path})", status=404, code="unknown_url")
