"""Text Hearth accepts from a request: valid Unicode without NUL.

PostgreSQL refuses a NUL (U+0000) in text, and no database driver can encode a lone surrogate (U+D800-U+DFFF,
which JSON's "\\ud800" escapes produce); both used to surface as 500s deep inside a view. Every way text comes in
checks it here first: the API's JSON bodies (`api.parser`), the chat socket's messages (`webui.consumers`), and
the URLs and forms of every page (`config.security`).
"""

from __future__ import annotations

import json
import math
import re

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class InvalidText(ValueError):
    """Text Hearth refuses; `param` names where it was ("messages.0.content"), when known."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidJson(ValueError):
    """A body or message that is not JSON as RFC 8259 has it (UTF-8, no NaN or Infinity); `message` says why,
    as a phrase ("Expecting value at line 1, column 1")."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def text_problem(text: str) -> str | None:
    """What is wrong with `text`, or None when Hearth can store it."""
    found = UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000), which Hearth cannot store"
    return f"contains a lone surrogate (\\u{ord(found.group()):04x}), which is not valid Unicode text"


def check_text(value, param: str | None = None) -> None:
    """Raise InvalidText for the first string in `value` (a string, or JSON-like lists and dicts, keys included)
    that Hearth cannot store, naming where it is. Iterative, so deep nesting costs no recursion."""
    pending = [(value, param)]
    while pending:
        item, where = pending.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                raise InvalidText(f"Invalid '{where}': it {problem}." if where else f"The request {problem}.",
                                  param=where)
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                pending.append((child, _join(where, key)))
                pending.append((key, where))
        elif isinstance(item, list | tuple):
            pending.extend((child, _join(where, index)) for index, child in reversed(list(enumerate(item))))


def _join(where: str | None, part) -> str:
    return f"{where}.{part}" if where else str(part)


def _refuse_constant(name: str):
    raise InvalidJson(f"{name} is not a number JSON allows; send a finite number")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise InvalidJson(f"{literal[:40]} is too large for a number")
    return number


def loads(raw: bytes | str):
    """Parse JSON strictly (UTF-8; no NaN, Infinity or numbers that overflow to them) and check its text.
    Raises InvalidJson or InvalidText."""
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidJson(f"it is not UTF-8 (byte {error.start} is not valid)") from None
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except InvalidJson:
        raise
    except json.JSONDecodeError as error:
        raise InvalidJson(f"{error.msg} at line {error.lineno}, column {error.colno}") from None
    except RecursionError:
        raise InvalidJson("it is nested too deeply") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise InvalidJson(str(error)) from None
    check_text(value)
    return value
