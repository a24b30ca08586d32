"""A plain SSE client for the tests: each event's id, its data (parsed JSON, or "[DONE]") and when it arrived."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx


@dataclass
class SseEvent:
    id: str | None
    data: object
    at: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.data == "[DONE]"


def events(response: httpx.Response) -> Iterator[SseEvent]:
    event_id, data = None, []
    for line in response.iter_lines():
        if line == "":
            if data:
                text = "\n".join(data)
                yield SseEvent(event_id, text if text == "[DONE]" else json.loads(text))
            event_id, data = None, []
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def stream(base_url: str, path: str, body: dict, api_key: str, *, headers: dict | None = None,
           timeout: float = 120) -> Iterator[SseEvent]:
    with httpx.stream("POST", f"{base_url}{path}", json={**body, "stream": True}, timeout=timeout,
                      headers={"Authorization": f"Bearer {api_key}", **(headers or {})}) as response:
        response.raise_for_status()
        yield from events(response)


def text_of(received: list[SseEvent]) -> str:
    """The content of chat or text completion chunks, in order."""
    parts = []
    for event in received:
        if event.done or not isinstance(event.data, dict):
            continue
        for choice in event.data.get("choices") or ():
            delta = choice.get("delta") or {}
            parts.append(delta.get("content") or choice.get("text") or "")
    return "".join(parts)


def id_key(event_id: str) -> tuple[int, int]:
    head, _, tail = event_id.partition(".")
    return int(head), int(tail or 0)
