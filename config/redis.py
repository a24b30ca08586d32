"""How every Redis client of Hearth connects: one place for timeouts, keepalive and reconnection.

redis-py's default socket timeout (5 s) is shorter than the blocking reads Hearth makes (the relay's XREAD, the
channel layer's BZPOPMIN, Celery's BRPOP): a quiet connection then fails with TimeoutError although nothing is
wrong. Each client here gets a socket timeout that outlasts its longest blocking read by a margin, a short
connect timeout (Redis down is noticed in seconds), TCP keepalive, a health check before reusing an idle
connection, and a few quick retries with backoff on connection errors, so that a restarted Redis is reconnected
to by itself.
"""

from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT_SECONDS = 3
TIMEOUT_MARGIN_SECONDS = 5  # a blocking read's socket timeout is its block time plus this
COMMAND_TIMEOUT_SECONDS = 5  # a plain command (GET, SET, XADD) that takes longer means Redis is in trouble
HEALTH_CHECK_SECONDS = 30
RETRIES = 2

# The channel layer blocks on BZPOPMIN for this long per receive (channels_redis' own default).
CHANNEL_LAYER_BLOCK_SECONDS = 5


def client_options(blocking_seconds: float = 0) -> dict[str, Any]:
    """Keyword arguments for redis.Redis / redis.asyncio.Redis (from_url or ConnectionPool.from_url) for a
    client whose longest blocking command waits `blocking_seconds`."""
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, TimeoutError
    from redis.retry import Retry

    timeout = blocking_seconds + TIMEOUT_MARGIN_SECONDS if blocking_seconds else COMMAND_TIMEOUT_SECONDS
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": timeout,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_SECONDS,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES),
        "retry_on_error": [ConnectionError, TimeoutError],
    }


def async_retry_options(blocking_seconds: float = 0) -> dict[str, Any]:
    """client_options for redis.asyncio (its Retry class is its own)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    options = client_options(blocking_seconds)
    options["retry"] = Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES)
    return options


def celery_transport_options() -> dict[str, Any]:
    """Celery's Redis transport: kombu passes these to redis-py (its BRPOP blocks about a second)."""
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": COMMAND_TIMEOUT_SECONDS + TIMEOUT_MARGIN_SECONDS,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_SECONDS,
        "retry_on_timeout": True,
    }
