"""Anthropic's Messages API: POST /v1/messages and POST /v1/messages/count_tokens.

For the official `anthropic` client, Claude Code-style agents and litellm's `anthropic/` provider. A request is
translated into an OpenAI `ChatCompletionRequest` (api/schemas/anthropic.py) and runs as every generation does
(api/generation.py `start_jobs`: keys, limits, backend choice, the x-hearth-* headers); its events are rendered
as Anthropic's message object or its typed SSE stream. Errors on these paths come out in Anthropic's shape
(api/dialects.py, `api.schemas.anthropic:error_body`).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.http import HttpRequest, JsonResponse
from ninja import Router
from pydantic import ValidationError

from api.auth import AnthropicApiKeyAuth
from api.errors import error_response
from api.generation import start_jobs
from api.schemas import anthropic as am
from api.streaming import Answer, JobOutcome, collect, error_event_response, sse_response, typed_sse
from api.tools import parse_tool_calls
from inference.models import GenerationJob

router = Router(auth=AnthropicApiKeyAuth(), tags=["Anthropic"])
FRAMING = typed_sse(am.stream_error)


def _refused(error: ValidationError) -> JsonResponse:
    """What the OpenAI schema refused of a translated request (rare: the Anthropic schema checks first)."""
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return error_response(f"Invalid request{f' ({where})' if where else ''}: {first.get('msg', 'invalid value')}.",
                          code="invalid_value")


def _content(outcome: JobOutcome, tools: list[dict[str, Any]] | None, message_id: str
             ) -> tuple[list[dict[str, Any]], str]:
    """The answer's content blocks and stop reason: the text, and with tools the calls parsed out of it."""
    if not tools:
        return [am.text_block(outcome.text)], am.stop_reason(outcome.finish_reason, outcome.stop_sequence)
    text, calls = parse_tool_calls(outcome.text, tools, id_seed=message_id)
    blocks = ([am.text_block(text)] if text else []) + [am.tool_use_block(call) for call in calls]
    return blocks, "tool_use" if calls else am.stop_reason(outcome.finish_reason, outcome.stop_sequence)


def _usage(outcome: JobOutcome) -> dict[str, int]:
    return am.usage(outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens)


def _renderer(message_id: str, model: str, tools: list[dict[str, Any]] | None):
    """render(index, event, answer) -> the stream events of one relay event. Without tools the text streams as
    text_delta events of block 0; with tools a call is only known whole, so the blocks come at the end (a text
    block, then each tool_use block with its input as one input_json_delta)."""
    opened = False

    def render(_index: int, event: dict[str, Any], answer: Answer) -> list[dict[str, Any]]:
        nonlocal opened
        outcome = answer.choice(0)
        events: list[dict[str, Any]] = []
        if not opened:  # the first event: "started" (or the "done" of a job cancelled before it started)
            opened = True
            events.append(am.message_start(message_id, model, am.usage(outcome.prompt_tokens, 0,
                                                                       outcome.cached_tokens)))
            if not tools:
                events.append(am.content_block_start(0, am.text_block("")))
            events.append(am.PING)
        if event["kind"] == "token" and not tools and event.get("text"):
            events.append(am.text_delta(0, event["text"]))
        elif event["kind"] == "done":
            blocks, stop = _content(outcome, tools, message_id)
            if tools:
                for index, block in enumerate(blocks):
                    events.extend(am.block_events(index, block))
            else:
                events.append(am.content_block_stop(0))
            events += [am.message_delta(stop, _usage(outcome), outcome.stop_sequence), am.MESSAGE_STOP]
        return events

    return render


@router.post("/messages", summary="Create a message (Anthropic)")
async def create_message(request: HttpRequest, body: am.MessagesRequest):
    """A Messages API answer: the message object, or (`stream: true`) its typed SSE events."""
    try:
        chat = body.to_chat_request()
    except ValidationError as error:
        return _refused(error)
    started, failure = await start_jobs(request, chat, GenerationJob.Kind.CHAT,
                                        {"dialect": "anthropic", "model": body.model})
    if failure:
        return failure
    message_id = f"msg_{uuid.UUID(str(started.jobs[0].id)).hex}"
    tools = chat.tools if chat.uses_tools() else None
    events = started.streams[0]
    if body.stream:
        return sse_response(events, _renderer(message_id, body.model, tools), headers=started.headers,
                            framing=FRAMING)
    answer = await collect(events)
    if answer.error:
        return error_event_response(answer.error)
    outcome = answer.choice(0)
    content, stop = _content(outcome, tools, message_id)
    return JsonResponse(am.message(message_id, body.model, content, stop, _usage(outcome), outcome.stop_sequence),
                        headers=started.headers)


@router.post("/messages/count_tokens", summary="Count the tokens of a message (Anthropic)")
async def count_tokens(request: HttpRequest, body: am.CountTokensRequest):
    """{"input_tokens": N}: the prompt as the model's chat template renders it (system, messages, tools),
    tokenized by a worker (which holds the tokenizer) in a job that decodes nothing."""
    try:
        chat = body.to_counting_request()
    except ValidationError as error:
        return _refused(error)
    started, failure = await start_jobs(request, chat, GenerationJob.Kind.CHAT,
                                        {"dialect": "anthropic_count_tokens", "model": body.model})
    if failure:
        return failure
    answer = await collect(started.streams[0])
    if answer.error:
        return error_event_response(answer.error)
    return JsonResponse({"input_tokens": answer.prompt_tokens}, headers=started.headers)
