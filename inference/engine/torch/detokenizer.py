"""Streaming detokenization that only ever emits complete characters."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
        return current[len(emitted) :]

    def flush(self) -> str:
        """Whatever is still held back at the end (a character that never completed)."""
        emitted = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        current = self._decode(self._tokens[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._tokens)
        return current[len(emitted) :] if len(current) > len(emitted) else ""
