"""Tool calls in a model's text, in the formats chat templates teach models to write, as OpenAI `tool_calls`.

- Hermes / Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call.
- Llama 3.x: the reply is one JSON object `{"name": ..., "parameters": {...}}` (optionally after `<|python_tag|>`),
  or several separated by ";".
- Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`.

`parse_tool_calls(text, tools)` returns the text outside the calls (None when nothing is left) and the calls;
only names among the request's tools count, so ordinary JSON answers are not mistaken for calls.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from typing import Any

HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
MISTRAL_TAG = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"


def _call_id(seed: str | None, position: int) -> str:
    """A call's id: derived from `seed` (the completion's id) when given, so a resumed stream repeats it."""
    if seed is None:
        return f"call_{secrets.token_hex(12)}"
    return "call_" + hashlib.sha256(f"{seed}:{position}".encode()).hexdigest()[:24]


def _as_call(value: Any, names: set[str]) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(name, str) or name not in names:
        return None
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"id": "", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _load(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def tool_names(tools: Sequence[dict[str, Any]] | None) -> set[str]:
    return {(tool.get("function") or {}).get("name") for tool in tools or () if tool.get("type", "function")
            == "function"} - {None}


def parse_tool_calls(text: str, tools: Sequence[dict[str, Any]] | None, *, id_seed: str | None = None
                     ) -> tuple[str | None, list[dict[str, Any]]]:
    content, calls = _parse(text, tools)
    for position, call in enumerate(calls):
        call["id"] = _call_id(id_seed, position)
    return content, calls


def _parse(text: str, tools: Sequence[dict[str, Any]] | None) -> tuple[str | None, list[dict[str, Any]]]:
    names = tool_names(tools)
    if not names:
        return text, []
    if "<tool_call>" in text:
        calls = [_as_call(_load(block), names) for block in HERMES.findall(text)]
        if calls and all(calls):
            rest = HERMES.sub("", text).strip()
            return rest or None, calls
    stripped = text.strip()
    if stripped.startswith(MISTRAL_TAG):
        payload = _load(stripped[len(MISTRAL_TAG):].strip())
        items = payload if isinstance(payload, list) else [payload]
        calls = [_as_call(item, names) for item in items]
        if calls and all(calls):
            return None, calls
    if stripped.startswith(PYTHON_TAG):
        stripped = stripped[len(PYTHON_TAG):].strip()
    if stripped.startswith("{"):
        parts = [part for part in (_load(p) for p in stripped.split(";")) if part is not None] \
            if _load(stripped) is None else [_load(stripped)]
        calls = [_as_call(part, names) for part in parts]
        if calls and all(calls):
            return None, calls
    return text, []
