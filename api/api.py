"""The NinjaAPI: OpenAI-shaped errors for everything, /v1 routes, /health."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError

from api.errors import error_response
from api.routers import health, openai
from api.schemas.openai import validation_error_to_openai

api = NinjaAPI(
    title="Hearth",
    version="1",
    description="OpenAI-compatible API of a Hearth server.",
    docs_url="/api/docs",
    openapi_url="/api/openapi.json",
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
    if exc.status_code == 400 and str(exc).startswith("Cannot parse request body"):
        return error_response("The request body is not valid JSON.", code="invalid_json")
    return error_response(str(exc), status=exc.status_code)


api.add_router("/v1", openai.router)
api.add_router("", health.router)
