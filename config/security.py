"""Middleware that guards every HTTP request and response, pages and API alike.

- ContentSecurityPolicyMiddleware: scripts, styles and everything else from this site only, on every response.
- RefuseKeysInUrlMiddleware: a credential in the query string (`?api_key=`, `?key=`, a Hearth key under any name)
  is refused before anything reads it; `manage.py serve` keeps query strings out of the access log.
- RefuseInvalidTextMiddleware: NUL or lone surrogates in a URL's parameters or a form (config.text) get a 400
  instead of reaching the database. The API's JSON bodies are checked by its parser (api.parser).

A refusal answers in OpenAI's error envelope on the API's paths and as the 400 page elsewhere.
"""

from __future__ import annotations

import re

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.shortcuts import render

from api.errors import error_response
from api.models import KEY_PREFIX
from config.text import InvalidText, check_text

API_PATH_PREFIXES = ("/v1/", "/api/", "/health")

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

# Query parameters that carry credentials by convention; any value shaped like a Hearth key counts too.
CREDENTIAL_PARAMETERS = frozenset({"api_key", "api-key", "apikey", "key", "access_token", "token", "auth",
                                   "authorization", "bearer", "password", "secret"})
HEARTH_KEY = re.compile(rf"\b{KEY_PREFIX}_[0-9a-f]{{12}}_")
FORM_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def refusal(request, message: str, *, status: int = 400, param: str | None = None, code: str | None = None):
    if request.path.startswith(API_PATH_PREFIXES):
        return error_response(message, status=status, param=param, code=code)
    return render(request, "400.html", {"message": message}, status=status)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


def credential_in_query(query) -> str | None:
    """The name of the first query parameter that carries a credential, or None."""
    for name, values in query.lists():
        if name.lower() in CREDENTIAL_PARAMETERS or any(HEARTH_KEY.search(value) for value in values):
            return name
    return None


class RefuseKeysInUrlMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        name = credential_in_query(request.GET)
        if name is None:
            return self.get_response(request)
        return refusal(
            request,
            f"Refused: the URL carries a credential in its query string ('{name}'). URLs end up in logs and browser "
            "history, so Hearth takes API keys only in the header 'Authorization: Bearer <key>' (this one was "
            "not logged). If the URL went through a proxy or was shared, revoke the key on the API keys page.",
            param=name, code="api_key_in_url",
        )


def _check_pairs(pairs) -> None:
    for name, values in pairs:
        check_text(name)
        for value in values:
            check_text(value, name)


class RefuseInvalidTextMiddleware:
    """Runs when the URL resolved to a view: its path parameters, the query string and (pages only) the form."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        try:
            _check_pairs((name, [value]) for name, value in view_kwargs.items() if isinstance(value, str))
            _check_pairs(request.GET.lists())
            if request.content_type in FORM_CONTENT_TYPES and not request.path.startswith(API_PATH_PREFIXES):
                try:
                    form = request.POST
                except (RequestDataTooBig, TooManyFieldsSent):
                    return None  # the view refuses it with its own answer
                _check_pairs(form.lists())
        except InvalidText as error:
            return refusal(request, error.message, param=error.param, code="invalid_text")
        return None
