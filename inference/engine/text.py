"""Text plumbing every backend shares: complete-character decoding and stop strings."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class Utf8Stream:
    """Turns token bytes into text, emitting only complete UTF-8 characters."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopStrings:
    """Holds back text that might be the start of a stop string; cuts at the first stop string found.

    feed() returns the text safe to emit now and whether a stop string was reached (text after it is
    dropped, the stop string itself is never emitted, and `matched` says which one it was). flush() releases what
    was held back.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buffer = self._held + text
        found = [(at, stop) for stop in self.stops if (at := buffer.find(stop)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda hit: hit[0])
            self._held = ""
            return buffer[:cut], True
        keep = self._longest_stop_prefix_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of buffer that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:length]):
                    best = length
                    break
        return best


REPLACEMENT_CHAR = "\ufffd"


class StreamingDetokenizer:
    """Feed token ids one at a time; get back the new text they complete.

    Decoding token by token breaks multi-byte characters (byte-fallback tokens, byte-level BPE) and
    loses the leading spaces some tokenizers strip from a first token. So we decode a short window
    of recent tokens twice, with and without the new ones, and emit the difference once it no
    longer ends in a half-finished character (decoded as U+FFFD).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self._decode = decode
        self._tokens: list[int] = []
        self._prefix_offset = 0  # start of the context window
        self._read_offset = 0  # tokens before this are already emitted

    def add(self, token_id: int) -> str:
        self._tokens.append(token_id)
        emitted = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        current = self._decode(self._tokens[self._prefix_offset :])
        if current.endswith(REPLACEMENT_CHAR) or len(current) <= len(emitted):
            return ""  # an incomplete character: wait for the bytes that finish it
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._tokens)
        return _printable(current[len(emitted) :])

    def flush(self) -> str:
        """Whatever is still held back at the end (a character that never completed)."""
        emitted = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        current = self._decode(self._tokens[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._tokens)
        return _printable(current[len(emitted) :]) if len(current) > len(emitted) else ""


def _printable(text: str) -> str:
    """A model's text never carries NUL: Postgres cannot store it and HTML drops it, so the reply streamed, the one
    stored and the one a page shows would differ. It becomes U+FFFD, as an undecodable byte does."""
    return text.replace("\x00", REPLACEMENT_CHAR)
