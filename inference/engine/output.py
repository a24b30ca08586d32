"""The one token loop of Hearth: a sequence's sampled token ids become the events the relay carries.

Every backend only samples token ids; `OutputProcessor` does the rest once, for all of them: complete-character
detokenizing, stop strings (never emitted, text after them dropped), end-of-generation tokens, the token budget,
finish reasons, log probabilities, and timing.

Events (plain dicts, as the relay carries them):
- "started": prompt_tokens, cached_tokens (reused from the prefix cache), dropped_messages (left out to fit);
- "token": text (new complete characters), ids (every token id consumed since the previous "token" event, so a
  worker taking the job over can replay them and continue exactly where the text stopped), logprobs (when asked);
- "done": finish_reason ("stop", "length", "cancelled"), counts, time_to_first_token, tokens_per_second, and
  stop_sequence: the stop string that ended the text, when one did.

A job of n choices has one OutputProcessor per choice; the worker tags their events with the choice and publishes
each one's "done" as a "choice_end" (inference/worker.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from inference.engine.text import StopStrings, StreamingDetokenizer


@dataclass
class OutputProcessor:
    detokenize: Callable[[Sequence[int]], str]
    eog_ids: frozenset[int]
    max_new_tokens: int
    stop: Sequence[str] = ()
    n_prompt: int = 0
    cached_tokens: int = 0
    logprobs: bool = False
    started_at: float = field(default_factory=time.perf_counter)
    completion_tokens: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        self._detokenizer = StreamingDetokenizer(self.detokenize)
        self._stops = StopStrings(tuple(self.stop))
        self._ids: list[int] = []  # consumed since the last token event
        self._logprobs: list[dict[str, Any]] = []
        self._text: list[str] = []  # everything emitted, for the job's row

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return "".join(self._text)

    def started(self, *, dropped_messages: int = 0, **extra: Any) -> dict[str, Any]:
        event = {"kind": "started", "prompt_tokens": self.n_prompt, **extra}
        if self.cached_tokens:
            event["cached_tokens"] = self.cached_tokens
        if dropped_messages:
            event["dropped_messages"] = dropped_messages
        return event

    def add(self, token: int, logprobs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Take one sampled token; the events it completes (a "token", and a "done" when it ends the sequence)."""
        if self.finished:
            return []
        now = time.perf_counter()
        self.first_token_at = self.first_token_at or now
        self.last_token_at = now
        self._ids.append(token)
        if token in self.eog_ids:
            return self._end("stop")
        self.completion_tokens += 1
        if logprobs is not None:
            self._logprobs.append(logprobs)
        text, hit_stop = self._stops.feed(self._detokenizer.add(token))
        events = self._token_event(text)
        if hit_stop:
            self.finish_reason = "stop"
            return events + [self._done()]
        if self.completion_tokens >= self.max_new_tokens:
            return events + self._end("length")
        return events

    def end(self, reason: str) -> list[dict[str, Any]]:
        """End the sequence from outside (cancelled, context full): what was held back, then "done"."""
        if self.finished:
            return []
        return self._end(reason)

    def replay(self, ids: Sequence[int]) -> None:
        """Rebuild the state of a sequence whose first events went out from another worker: the same ids give
        the same text, held-back characters and counts, and nothing is emitted. When they already use up the
        token budget, the caller ends the sequence ("length") at once."""
        budget, self.max_new_tokens = self.max_new_tokens, 1 << 62
        for token in ids:
            self.add(token)
        self.max_new_tokens = budget
        self._ids, self._logprobs = [], []
        self.finish_reason = None
        self.first_token_at = self.last_token_at = None

    @property
    def exhausted(self) -> bool:
        return self.completion_tokens >= self.max_new_tokens

    def _token_event(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        self._text.append(text)
        event: dict[str, Any] = {"kind": "token", "text": text, "ids": self._ids}
        if self.logprobs:
            event["logprobs"] = self._logprobs
        self._ids, self._logprobs = [], []
        return [event]

    def _end(self, reason: str) -> list[dict[str, Any]]:
        """Release what was held back (a half character, a possible start of a stop string), then "done"."""
        tail, hit_stop = self._stops.feed(self._detokenizer.flush())
        if hit_stop:
            reason = "stop"
        else:
            tail += self._stops.flush()
        events = self._token_event(tail) if tail else []
        self.finish_reason = reason
        return events + [self._done()]

    def _done(self) -> dict[str, Any]:
        decode_seconds = (self.last_token_at - self.first_token_at) if self.first_token_at else 0.0
        event: dict[str, Any] = {
            "kind": "done",
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.n_prompt,
            "completion_tokens": self.completion_tokens,
        }
        if self.cached_tokens:
            event["cached_tokens"] = self.cached_tokens
        if self._stops.matched is not None:
            event["stop_sequence"] = self._stops.matched
        if self.first_token_at is not None:
            event["time_to_first_token"] = self.first_token_at - self.started_at
        if self.completion_tokens > 1 and decode_seconds > 0:
            event["tokens_per_second"] = (self.completion_tokens - 1) / decode_seconds
        return event
