"""Read settings from the environment, failing loudly on values that cannot be right."""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below its minimum of {minimum}.")
    return value


def env_bytes(name: str, default: int) -> int:
    """A size such as 512M, 8G or 1048576 (bytes)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a size; write e.g. 512M or 8G.") from None
    if value <= 0:
        raise ImproperlyConfigured(f"{name}={raw!r} must be positive.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_json(name: str, default):
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    import json

    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {error}.") from None


def backend_settings(default_name: str, default_backend: str, chains_name: str, chains) -> None:
    """The default backend and the fallback chains name only backends Hearth has (engine/backends.py)."""
    from inference.engine.backends import backend_names, find_backend

    if default_backend and find_backend(default_backend) is None:
        raise ImproperlyConfigured(f"{default_name}={default_backend!r} is no backend; use {backend_names()}.")
    if not isinstance(chains, dict) or not all(isinstance(v, list) for v in chains.values()):
        raise ImproperlyConfigured(f'{chains_name} maps a backend to the list tried after it: {{"llamacpp": ["torch"]}}.')
    unknown = sorted({str(n) for name, chain in chains.items() for n in [name, *chain] if find_backend(str(n)) is None})
    if unknown:
        raise ImproperlyConfigured(f"{chains_name} names {', '.join(unknown)}, which is no backend; use {backend_names()}.")


def env_url(name: str) -> str:
    """An http(s) URL such as https://sso.example.com/realms/team, or "" when unset."""
    from urllib.parse import urlsplit

    raw = env_str(name)
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an http(s) URL such as https://sso.example.com/realms/team.")
    return raw
