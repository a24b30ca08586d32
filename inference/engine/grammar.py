"""Constrained decoding: OpenAI's `response_format` and forced `tools` as data, and llama.cpp grammars from them.

The web process describes what the output must be (`structure_for_response_format`, `structure_for_tools`: plain
dicts that travel on the job, checked for size and remote references); the llama.cpp backend compiles them
(`compile_structure`) into GBNF with llama.cpp's own JSON-schema converter, which honours type, properties,
required, enum, const, minLength/maxLength, minItems/maxItems, min/max, pattern, anyOf/oneOf and local $refs.
Whitespace between tokens is bounded, so a model cannot wander off into blank space. The web process never
imports llama.cpp.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from inference.engine.base import InvalidRequest
from inference.engine.tool_prompt import HERMES_CLOSE, HERMES_OPEN

MAX_SCHEMA_BYTES = 64 * 1024


def _checked(schema: Any, param: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param} must be a JSON schema object.")
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"{param}: the schema is over {MAX_SCHEMA_BYTES // 1024} KiB.")
    if _has_remote_ref(schema):
        raise InvalidRequest(f"{param}: only local $refs (\"#/...\") are supported in a schema.")
    return schema


def _has_remote_ref(node: Any) -> bool:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return True
        return any(_has_remote_ref(value) for value in node.values())
    if isinstance(node, list):
        return any(_has_remote_ref(value) for value in node)
    return False


def structure_for_response_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """`{"type": "json_object"}`: any JSON object; `{"type": "json_schema", "json_schema": {"schema": ...}}`: a
    value valid for the schema; text or nothing: None."""
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    if response_format["type"] == "json_object":
        return {"type": "json_schema", "schema": {"type": "object"}}
    if response_format["type"] == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") or {"type": "object"}
        return {"type": "json_schema", "schema": _checked(schema, "response_format.json_schema.schema")}
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
    return _checked(calls[0] if len(calls) == 1 else {"anyOf": calls}, "tools")


def structure_for_tools(tools: Sequence[dict[str, Any]], tool_choice: str | dict[str, Any] | None, *,
                        parallel: bool = False, open_tag: str = HERMES_OPEN, close_tag: str = HERMES_CLOSE
                        ) -> dict[str, Any]:
    """A forced call (tool_choice "required" or a named function): one call, or several with `parallel`, each
    wrapped the way the model's template writes them (Hermes/Qwen by default).

    The grammar's root ends with the close tag: once the (last) call is closed, llama.cpp's grammar sampler leaves
    only the end-of-generation tokens, so decoding ends right after the call instead of running to max_tokens."""
    return {"type": "tool_calls", "schema": tool_call_schema(tools, tool_choice), "open": open_tag,
            "close": close_tag, "parallel": bool(parallel)}


# ---------------------------------------------------------------------------------------------------------
# In the worker: compiled for llama.cpp.


def compile_structure(structure: dict[str, Any]) -> str:
    """GBNF text for a structure (cached: the same schema compiles once per process).

    The keys keep their order: llama.cpp writes an object's properties in the schema's order, so a call comes as
    {"name": ..., "arguments": ...} (its name first, which lets its arguments stream) and a response format's
    properties in the order the client gave them."""
    return _compile(json.dumps(structure))


@lru_cache(maxsize=128)
def _compile(structure_json: str) -> str:
    structure = json.loads(structure_json)
    kind = structure.get("type")
    if kind == "json_schema":
        return _converter_gbnf(structure["schema"], "response_format")
    if kind == "tool_calls":
        call_rules = _converter_gbnf(structure["schema"], "tools").replace("root ::=", "call ::=", 1)
        wrapped = f'{json.dumps(structure.get("open", HERMES_OPEN))} call {json.dumps(structure.get("close", HERMES_CLOSE))}'
        repeat = f' ("\\n" {wrapped})*' if structure.get("parallel") else ""
        return f"root ::= {wrapped}{repeat}\n{call_rules}"
    raise InvalidRequest(f"Unknown structured output type {kind!r}.")


def _converter_gbnf(schema: dict[str, Any], param: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    _checked(schema, param)
    try:
        return _strict_json_chars(json_schema_to_gbnf(json.dumps(schema)))
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError, NotImplementedError) as error:
        raise InvalidRequest(f"{param}: this JSON schema cannot be turned into a grammar ({error}).") from None


def _strict_json_chars(gbnf: str) -> str:
    """JSON forbids raw control characters inside strings; the converter's `char` rule lets them through."""
    return gbnf.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')
