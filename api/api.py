"""The NinjaAPI: OpenAI-shaped errors for everything, /v1 routes, /health."""

from __future__ import annotations

import logging

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError

from api.auth import Refused, body_too_large
from api.errors import error_response
from api.parser import StrictJsonParser
from api.routers import admin, anthropic, health, ollama, openai, responses
from api.schemas.openai_output import validation_error_to_openai
from config.text import InvalidJson, InvalidText

api = NinjaAPI(
    title="Hearth",
    version="1",
    description="OpenAI-compatible API of a Hearth server.",
    docs_url="/api/docs",
    openapi_url="/api/openapi.json",
    parser=StrictJsonParser(),
)


@api.exception_handler(NinjaValidationError)
def on_validation_error(request: HttpRequest, exc: NinjaValidationError):
    """400 (not ninja's 422) in OpenAI's envelope, naming the parameter. Body locations are ("body", "body", ...)."""
    skip = 2 if exc.errors and tuple(exc.errors[0].get("loc", ()))[:1] == ("body",) else 1
    payload = validation_error_to_openai(exc.errors, skip_loc=skip)
    return JsonResponse(payload, status=400)


@api.exception_handler(AuthenticationError)
def on_authentication_error(request: HttpRequest, exc: AuthenticationError):
    return error_response(
        "Missing or invalid API key. Send 'Authorization: Bearer <key>'; create a key with "
        "'python manage.py create_api_key USERNAME'.",
        status=401, code="invalid_api_key",
    )


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError):
    cause = exc.__cause__  # what the parser raised, when ninja could not parse the body
    if isinstance(cause, InvalidText):
        return error_response(cause.message, param=cause.param, code="invalid_text")
    if isinstance(cause, InvalidJson):
        return error_response(f"The request body is not valid JSON: {cause.message}.", code="invalid_json")
    if exc.status_code == 400 and str(exc).startswith("Cannot parse request body"):
        return error_response("The request body is not valid JSON.", code="invalid_json")
    return error_response(str(exc), status=exc.status_code)


@api.exception_handler(Refused)
def on_refused(request: HttpRequest, exc: Refused):
    """Size (413), rate limit (429) and permission (403) refusals carry their response."""
    return exc.response


@api.exception_handler(RequestDataTooBig)
def on_body_too_large(request: HttpRequest, exc: RequestDataTooBig):
    """Django's own DATA_UPLOAD_MAX_MEMORY_SIZE, when it is below HEARTH_MAX_BODY_BYTES or the length was unknown."""
    from django.conf import settings

    return body_too_large(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


@api.exception_handler(Exception)
def on_unexpected_error(request: HttpRequest, exc: Exception):
    """Redis or the database briefly gone: 503 with Retry-After. Whatever else goes wrong still answers in
    OpenAI's envelope; the traceback goes to the log."""
    from inference.outages import RETRY_AFTER_SECONDS, outage_message, outage_seen

    service = outage_seen(exc)
    if service is not None:
        logging.getLogger("api").warning("%s unreachable on %s: %s", service, request.path, exc)
        return error_response(outage_message(service), status=503, code="service_unavailable",
                              headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    logging.getLogger("api").error("unhandled error on %s", request.path, exc_info=exc)
    return error_response(f"Internal error: {type(exc).__name__}. The server log has the details.", status=500,
                          code="internal_error")


api.add_router("/v1/admin", admin.router)
api.add_router("/v1", responses.router)  # before OpenAI's: /v1/responses/... is its own
api.add_router("/v1", openai.router)
api.add_router("/v1", anthropic.router)
api.add_router("/api", ollama.router)  # Ollama's paths; the docs stay at /api/docs and /api/openapi.json
api.add_router("", health.router)
