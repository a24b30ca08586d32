"""Conditions with a name: Redis or the database briefly gone. Every entry point answers them with 503 and
Retry-After (the API), a readable page (the web UI) or an error message (the chat socket), never a 500."""

from __future__ import annotations

RETRY_AFTER_SECONDS = 5


def outage_of(error: BaseException) -> str | None:
    """"Redis" or "the database" when `error` means that service is unreachable right now, else None."""
    import redis
    from django.db import InterfaceError, OperationalError
    from kombu.exceptions import OperationalError as BrokerError

    if isinstance(error, redis.ConnectionError | redis.TimeoutError | BrokerError):
        return "Redis"
    if isinstance(error, OperationalError | InterfaceError):
        return "the database"
    try:
        from psycopg_pool import PoolTimeout
    except ImportError:  # SQLite only
        return None
    return "the database" if isinstance(error, PoolTimeout) else None


def outage_seen(error: BaseException) -> str | None:
    """outage_of(error), counted in the metrics when it is one."""
    service = outage_of(error)
    if service is not None:
        from inference.metrics import observe_outage

        observe_outage(service)
    return service


def outage_message(service: str) -> str:
    return (f"The server cannot reach {service} right now; this is usually brief (a restart). "
            f"Try again in {RETRY_AFTER_SECONDS} seconds.")
