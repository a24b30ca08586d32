"""Tool calls in a model's text, in the formats chat templates teach models to write, read whole or as it streams.

- Hermes / Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call, anywhere in the
  reply (the format Hearth's own tools prompt teaches, and the one a forced call's grammar writes).
- Llama 3.x: the reply is one JSON object `{"name": ..., "parameters": {...}}` (optionally after `<|python_tag|>`),
  or several separated by ";".
- Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`.

`ToolCallStream` is fed the text as it comes and says what it can as soon as it can, in no dialect's shape:
`TextDelta`s while no call can have started, and per call a `CallStart` (index, id, name) then `ArgumentsDelta`s
whose texts joined are the call's whole arguments. A Hermes call whose JSON starts `{"name": ..., "arguments": {`
streams its arguments as the model writes them; any other call (a Llama 3 or Mistral reply, a Hermes block in
another order) comes whole when its end is known, the Llama 3 and Mistral ones at the end of the reply.

`parse_tool_calls(text, tools)` reads a whole reply with the same machinery, so a streamed answer adds up to the
non-streamed one: the same content (the text outside the calls, trimmed; None when nothing is left), the same
calls with the same ids. Only names among the request's tools count, so ordinary JSON answers are not mistaken
for calls. A call cut off (by max_tokens) is dropped and the complete ones before it kept; a reply without a
complete call is all content. What a stream has sent cannot be taken back: a streamed call whose JSON breaks
off stays a partial call there.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_TAG = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"
ARGUMENT_KEYS = ("arguments", "parameters")


# --- what a stream says ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """More of the reply's text outside the calls."""

    text: str


@dataclass(frozen=True)
class CallStart:
    """A call begins: its index among the reply's calls, its id and the function's name (no arguments yet)."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    """The next piece of call `index`'s arguments (a JSON object's text)."""

    index: int
    text: str


Delta = TextDelta | CallStart | ArgumentsDelta


@dataclass
class ToolCall:
    index: int
    id: str
    name: str
    arguments: str = ""
    complete: bool = False  # its JSON closed and valid


def call_id(seed: str | None, position: int) -> str:
    """A call's id: derived from `seed` (the completion's id and choice) when given, so a resumed stream and the
    non-streamed answer repeat it."""
    if seed is None:
        return f"call_{secrets.token_hex(12)}"
    return "call_" + hashlib.sha256(f"{seed}:{position}".encode()).hexdigest()[:24]


def tool_names(tools: Sequence[dict[str, Any]] | None) -> set[str]:
    functions = [tool.get("function") for tool in tools or ()
                 if isinstance(tool, dict) and tool.get("type", "function") == "function"]
    return {function["name"] for function in functions
            if isinstance(function, dict) and isinstance(function.get("name"), str)}


# --- reading JSON a piece at a time ---------------------------------------------------------------------

MORE, NO = "more", "no"  # the text so far could still become what is looked for / cannot


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _literal(text: str, i: int, literal: str) -> int | str:
    """The index after `literal` at `i`; MORE when the text ends inside it; NO when it is not there."""
    rest = text[i:i + len(literal)]
    if rest == literal:
        return i + len(literal)
    return MORE if literal.startswith(rest) else NO


def _string_end(text: str, i: int) -> int | str:
    """The index after the JSON string that starts at `i` (a quote); MORE when it has not ended yet."""
    escaped = False
    for j in range(i + 1, len(text)):
        if escaped:
            escaped = False
        elif text[j] == "\\":
            escaped = True
        elif text[j] == '"':
            return j + 1
    return MORE


_NAME, _KEY = object(), object()  # the steps of a call's head that are not literals


def _hermes_head(text: str) -> tuple[str, int] | str:
    """`{"name": "<name>", "arguments": {` at the start of a block's text: (name, index of the arguments' `{`),
    or MORE (the text so far could still become one) or NO."""
    i, name = 0, None
    for step in ("{", '"name"', ":", _NAME, ",", _KEY, ":", "{"):
        i = _skip_ws(text, i)
        if i >= len(text):
            return MORE
        if step is _NAME:
            end = _string_end(text, i) if text[i] == '"' else NO
            if not isinstance(end, int):
                return end
            name = _load(text[i:end])
            if not isinstance(name, str):
                return NO
            i = end
        elif step is _KEY:
            found = [_literal(text, i, f'"{key}"') for key in ARGUMENT_KEYS]
            ends = [end for end in found if isinstance(end, int)]
            if not ends:
                return MORE if MORE in found else NO
            i = ends[0]
        else:
            at = _literal(text, i, step)
            if not isinstance(at, int):
                return at
            if name is not None and step == "{":
                return name, i
            i = at
    return NO


class _JsonValueScanner:
    """Follows one JSON object or array through its pieces: where it ends (strings and escapes respected)."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def feed(self, text: str) -> int | None:
        """The length of `text` that belongs to the value: the index after its closing bracket, or None when
        all of it does and the value goes on."""
        for i, char in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return None


def _load(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def _as_call(value: Any, names: set[str]) -> tuple[str, str] | None:
    """(name, arguments as JSON text) of a call of one of `names`, else None."""
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(name, str) or name not in names:
        return None
    if isinstance(arguments, str):
        arguments = _load(arguments)
    if not isinstance(arguments, dict):
        return None
    return name, json.dumps(arguments, ensure_ascii=False)


def _json_calls(text: str, names: set[str]) -> list[tuple[str, str]] | None:
    """The calls of a whole Mistral or Llama 3 reply, or None when it is not (only) calls."""
    stripped = text.strip()
    if stripped.startswith(MISTRAL_TAG):
        payload = _load(stripped[len(MISTRAL_TAG):].strip())
        items = payload if isinstance(payload, list) else [payload]
        calls = [_as_call(item, names) for item in items]
        if calls and all(calls):
            return calls
    if stripped.startswith(PYTHON_TAG):
        stripped = stripped[len(PYTHON_TAG):].strip()
    if stripped.startswith("{"):
        whole = _load(stripped)
        parts = [whole] if whole is not None else [p for p in (_load(p) for p in stripped.split(";")) if p is not None]
        calls = [_as_call(part, names) for part in parts]
        if calls and all(calls):
            return calls
    return None


# --- the stream -----------------------------------------------------------------------------------------


class ToolCallStream:
    """Reads one reply (one choice) as it is generated; see the module's docstring.

    `feed(text)` and, at the end, `finish()` return the deltas their text makes known; `calls()` and `content()`
    are the whole answer once finished. `max_calls` (1 when parallel calls are off) drops any call after it."""

    def __init__(self, tools: Sequence[dict[str, Any]] | None, *, id_seed: str | None = None,
                 max_calls: int | None = None):
        self.names = tool_names(tools)
        self.id_seed = id_seed
        self.max_calls = max_calls
        self._calls: list[ToolCall] = []
        self._fed: list[str] = []
        self._content: list[str] = []
        self._pending_ws = ""  # whitespace after the last content: sent only when more content follows
        self._mode = "start" if self.names else "text"  # start | text | json | block
        self._buffer = ""  # text not yet decided (start, text: a possible "<tool_call" at its end; json: all)
        self._block = ""  # the current Hermes block's text after its open tag
        self._block_state = "head"  # head | arguments | tail | held
        self._call: ToolCall | None = None
        self._scanner: _JsonValueScanner | None = None
        self._tail_from = 0  # where the current block's text after its streamed arguments starts
        self._out: list[Delta] = []
        self.finished = False

    # -- the interface --

    def feed(self, text: str) -> list[Delta]:
        if self.finished:
            raise RuntimeError("the stream has finished")
        self._fed.append(text)
        self._take(text)
        out, self._out = self._out, []
        return out

    def finish(self) -> list[Delta]:
        if not self.finished:
            self.finished = True
            self._end()
        out, self._out = self._out, []
        return out

    def calls(self) -> list[ToolCall]:
        """The complete calls (a cut-off or broken one is left out), in order."""
        return [call for call in self._calls if call.complete]

    def content(self) -> str | None:
        """The text outside the complete calls, trimmed; without any complete call, all of the reply's text."""
        text = "".join(self._content) if self.calls() else "".join(self._fed).strip()
        return text or None

    # -- text outside the calls --

    def _text(self, text: str) -> None:
        """Content, trimmed at both ends of the whole: leading whitespace dropped, trailing held back."""
        pending = self._pending_ws + text
        body = pending.rstrip()
        if not self._content:
            body = body.lstrip()
        if body:
            self._pending_ws = pending[len(pending.rstrip()):]
            self._content.append(body)
            self._out.append(TextDelta(body))
        else:
            self._pending_ws = pending if self._content else ""

    def _take(self, text: str) -> None:
        if self._mode == "text" and not self.names:
            self._text(text)
            return
        if self._mode == "json":
            self._buffer += text
            return
        if self._mode == "block":
            self._in_block(text)
            return
        self._buffer += text
        if self._mode == "start":
            head = self._buffer.lstrip()
            if not head:
                return
            if head[0] == "{" or any(head.startswith(tag) for tag in (MISTRAL_TAG, PYTHON_TAG)):
                self._mode = "json"  # a Llama 3 or Mistral reply: known only at its end
                return
            if any(tag.startswith(head) for tag in (MISTRAL_TAG, PYTHON_TAG)):
                return
            self._mode = "text"
        self._scan_text()

    def _scan_text(self) -> None:
        """Content up to a Hermes open tag (then the block), holding back a possible start of one at the end."""
        buffer, self._buffer = self._buffer, ""
        at = buffer.find(HERMES_OPEN)
        if at >= 0:
            self._text(buffer[:at])
            self._open_block()
            self._in_block(buffer[at + len(HERMES_OPEN):])
            return
        keep = next((k for k in range(min(len(HERMES_OPEN) - 1, len(buffer)), 0, -1)
                     if HERMES_OPEN.startswith(buffer[-k:])), 0)
        self._text(buffer[:len(buffer) - keep])
        self._buffer = buffer[len(buffer) - keep:]

    # -- Hermes blocks --

    def _open_block(self) -> None:
        self._mode, self._block, self._block_state = "block", "", "head"
        self._call, self._scanner, self._tail_from = None, None, 0

    def _room(self) -> bool:
        return self.max_calls is None or len(self._calls) < self.max_calls

    def _in_block(self, text: str) -> None:
        start = len(self._block)
        self._block += text
        if self._block_state == "head":
            head = _hermes_head(self._block)
            if head == MORE and HERMES_CLOSE not in self._block:
                return
            if isinstance(head, tuple) and head[0] in self.names and self._room():
                name, brace = head
                self._call = self._start_call(name)
                self._block_state, self._scanner, start = "arguments", _JsonValueScanner(), brace
            else:
                self._block_state = "held"
        if self._block_state == "arguments":
            piece = self._block[start:]
            end = self._scanner.feed(piece)
            taken = piece if end is None else piece[:end]
            if taken:
                self._call.arguments += taken
                self._out.append(ArgumentsDelta(self._call.index, taken))
            if end is None:
                return
            self._block_state, self._tail_from = "tail", start + end
        # The close tag: after the streamed arguments (a string in them may hold one), in the new text.
        search_from = max(self._tail_from if self._block_state == "tail" else 0, start - len(HERMES_CLOSE) + 1)
        close = self._block.find(HERMES_CLOSE, search_from)
        if close < 0:
            return
        body, rest = self._block[:close], self._block[close + len(HERMES_CLOSE):]
        self._close_block(body, whole=f"{HERMES_OPEN}{body}{HERMES_CLOSE}", cut_off=False)
        self._mode = "text"
        if rest:
            self._buffer = rest
            self._scan_text()

    def _start_call(self, name: str) -> ToolCall:
        index = len(self._calls)
        call = ToolCall(index=index, id=call_id(self.id_seed, index), name=name)
        self._calls.append(call)
        self._out.append(CallStart(index, call.id, name))
        return call

    def _close_block(self, body: str, *, whole: str, cut_off: bool) -> None:
        """A block has ended (its close tag, or the reply's end): a streamed call is checked, a held one sent whole
        when it is a call, else its text is content (or dropped when cut off and calls came before)."""
        if self._call is not None:
            value = _load(body)
            arguments = value.get(next((k for k in ARGUMENT_KEYS if k in value), "arguments")) \
                if isinstance(value, dict) else None
            self._call.complete = (isinstance(value, dict) and value.get("name") == self._call.name
                                   and isinstance(arguments, dict) and _load(self._call.arguments) == arguments)
            return
        parsed = _as_call(_load(body), self.names)
        if parsed is not None:
            if self._room():
                call = self._start_call(parsed[0])
                call.arguments, call.complete = parsed[1], True
                self._out.append(ArgumentsDelta(call.index, parsed[1]))
            return
        if cut_off and self.calls():
            return
        self._text(whole)

    # -- the end --

    def _end(self) -> None:
        if self._mode == "json":
            text, self._buffer = self._buffer, ""
            calls = _json_calls(text, self.names)
            if calls is not None:
                for name, arguments in calls[:self.max_calls]:
                    call = self._start_call(name)
                    call.arguments, call.complete = arguments, True
                    self._out.append(ArgumentsDelta(call.index, arguments))
                return
            self._mode = "text"
            self._buffer = text
            self._scan_text()
        if self._mode == "block":
            self._close_block(self._block, whole=HERMES_OPEN + self._block, cut_off=True)
            self._mode = "text"
        if self._buffer:
            buffer, self._buffer = self._buffer, ""
            self._text(buffer)
        if self._mode == "start":
            self._mode = "text"


# --- whole replies --------------------------------------------------------------------------------------


def parse_tool_calls(text: str, tools: Sequence[dict[str, Any]] | None, *, id_seed: str | None = None,
                     max_calls: int | None = None) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, calls) of a whole reply, each call as `{"id", "type": "function", "function": {"name",
    "arguments"}}`; without tools the text is the content as it is."""
    if not tool_names(tools):
        return text, []
    stream = ToolCallStream(tools, id_seed=id_seed, max_calls=max_calls)
    stream.feed(text)
    stream.finish()
    calls = [{"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
             for call in stream.calls()]
    return stream.content(), calls
