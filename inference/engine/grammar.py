"""Constrained decoding: llama.cpp GBNF grammars from OpenAI's `response_format` and `tools`.

JSON schemas go through llama.cpp's own converter (`llama_cpp.llama_grammar.json_schema_to_gbnf`), which honours
type, properties, required, enum, const, minLength/maxLength, minItems/maxItems, min/max, pattern, anyOf/oneOf
and local $refs. Whitespace between tokens is bounded, so a model cannot wander off into blank space.
Remote $refs are refused (they would be fetched).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from inference.engine.base import InvalidRequest

MAX_SCHEMA_BYTES = 64 * 1024


def _converter_gbnf(schema: dict[str, Any], param: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"{param}: the schema is over {MAX_SCHEMA_BYTES // 1024} KiB.")
    if _has_remote_ref(schema):
        raise InvalidRequest(f"{param}: only local $refs (\"#/...\") are supported in a schema.")
    try:
        return _strict_json_chars(json_schema_to_gbnf(text))
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError, NotImplementedError) as error:
        raise InvalidRequest(f"{param}: this JSON schema cannot be turned into a grammar ({error}).") from None


def _strict_json_chars(gbnf: str) -> str:
    """JSON forbids raw control characters inside strings; the converter's `char` rule lets them through."""
    return gbnf.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')


def _has_remote_ref(node: Any) -> bool:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return True
        return any(_has_remote_ref(value) for value in node.values())
    if isinstance(node, list):
        return any(_has_remote_ref(value) for value in node)
    return False


def json_object_grammar() -> str:
    """`response_format: {"type": "json_object"}`: any JSON object."""
    return _converter_gbnf({"type": "object"}, "response_format")


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """`response_format: {"type": "json_schema", "json_schema": {"schema": ...}}`: a value valid for it."""
    if not isinstance(schema, dict):
        raise InvalidRequest("response_format.json_schema.schema must be a JSON schema object.")
    return _converter_gbnf(schema, "response_format.json_schema.schema")


def grammar_for_response_format(response_format: dict[str, Any] | None) -> str | None:
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    if response_format["type"] == "json_object":
        return json_object_grammar()
    if response_format["type"] == "json_schema":
        spec = response_format.get("json_schema") or {}
        return json_schema_grammar(spec.get("schema") or {"type": "object"})
    raise InvalidRequest(f"response_format.type {response_format['type']!r} is not one of text, json_object, "
                         "json_schema.")


def tool_call_schema(tools: Sequence[dict[str, Any]], tool_choice: str | dict[str, Any] | None) -> dict[str, Any]:
    """The JSON schema of one call: {"name": <a function's name>, "arguments": <its parameters>}.

    tool_choice "required" (or "auto" when constrained) allows any of the tools; {"type": "function",
    "function": {"name": N}} only N."""
    functions = [tool.get("function") or {} for tool in tools if tool.get("type", "function") == "function"]
    if isinstance(tool_choice, dict):
        wanted = (tool_choice.get("function") or {}).get("name")
        functions = [f for f in functions if f.get("name") == wanted]
        if not functions:
            raise InvalidRequest(f"tool_choice names the function {wanted!r}, which is not in tools.")
    if not functions:
        raise InvalidRequest("tools has no functions to call.")
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": f["name"]},
                           "arguments": f.get("parameters") or {"type": "object", "properties": {}}},
            "required": ["name", "arguments"],
        }
        for f in functions
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def tool_call_grammar(tools: Sequence[dict[str, Any]], tool_choice: str | dict[str, Any] | None, *,
                      open_tag: str = "<tool_call>\n", close_tag: str = "\n</tool_call>") -> str:
    """One or more calls, each wrapped the way the model's template writes them (Hermes/Qwen by default)."""
    call_rules = _converter_gbnf(tool_call_schema(tools, tool_choice), "tools")
    renamed = call_rules.replace("root ::=", "call ::=", 1)
    wrapped = f'{json.dumps(open_tag)} call {json.dumps(close_tag)}'
    return f"root ::= {wrapped} (\"\\n\" {wrapped})*\n{renamed}"
