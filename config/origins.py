"""Which pages may open the chat websocket: the site's own origin, exactly, or one of HEARTH_CSRF_TRUSTED_ORIGINS.

Browsers send the session cookie with a websocket handshake from any page, so the Origin header is what stops
another site (or another port of this host) from chatting as a logged-in user. The check is the one Django's
CSRF protection makes for forms: scheme, host and port must all match. The site's own origin is the handshake's
Host header (one of ALLOWED_HOSTS) with the scheme it arrived on: https when the connection was TLS, or when the
trusted proxy header (HEARTH_TRUSTED_PROXY_HEADER) says so.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized_origin(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin such as "https://Example.com", or None when it is not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host or parts.path not in ("", "/") or parts.query or parts.username:
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


def _headers(scope) -> dict[str, str]:
    return {name.decode("latin1").lower(): value.decode("latin1") for name, value in scope.get("headers", [])}


def _arrived_over_tls(scope, headers: dict[str, str]) -> bool:
    if scope.get("scheme") in ("wss", "https"):
        return True
    trusted = settings.SECURE_PROXY_SSL_HEADER
    if trusted:
        name = trusted[0].removeprefix("HTTP_").replace("_", "-").lower()
        return headers.get(name, "").split(",")[0].strip() == trusted[1]
    return False


def own_origin(scope, headers: dict[str, str]) -> tuple[str, str, int] | None:
    host = headers.get("host", "")
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    scheme = "https" if _arrived_over_tls(scope, headers) else "http"
    return normalized_origin(f"{scheme}://{host}")


def trusted_origin(origin: tuple[str, str, int]) -> bool:
    """One of CSRF_TRUSTED_ORIGINS; like Django, "https://*.example.com" admits the subdomains of example.com."""
    scheme, host, port = origin
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        if "://*." in entry:
            pattern = normalized_origin(entry.replace("://*.", "://", 1))
            if pattern and pattern[0] == scheme and pattern[2] == port and is_same_domain(host, "." + pattern[1]):
                return True
        elif normalized_origin(entry) == origin:
            return True
    return False


def origin_allowed(scope) -> bool:
    headers = _headers(scope)
    origin = normalized_origin(headers.get("origin", ""))
    if origin is None:
        return False
    return origin == own_origin(scope, headers) or trusted_origin(origin)


class SameOriginValidator:
    """ASGI middleware for websocket routes: a handshake from any other origin is denied (HTTP 403)."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
