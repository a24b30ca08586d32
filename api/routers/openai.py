"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from ninja import Router

from api.auth import ApiKeyAuth
from api.errors import error_response
from api.generation import engine_error_response, model_or_404, start_jobs
from api.limits import check_concurrency
from api.schemas import openai as oa
from api.schemas import openai_output as out
from api.streaming import (
    Answer,
    ChoiceEvents,
    JobEvents,
    JobOutcome,
    collect,
    ends_a_choice,
    error_event_response,
    now,
    parse_event_id,
    sse_response,
)
from api.tools import CallStart, Delta, TextDelta, ToolCallStream, parse_tool_calls
from inference import access
from inference.engine.base import EngineError
from inference.models import GenerationJob
from inference.selection import capability_refusal
from inference.services import embedding_start

router = Router(auth=ApiKeyAuth(), tags=["OpenAI"])


def _fingerprint(first: dict[str, Any]) -> str:
    """OpenAI's system_fingerprint names the serving configuration; Hearth's is the backend that served."""
    return f"hearth-{first.get('backend') or 'unknown'}"


def _model_card(model) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": int(model.created_at.timestamp()), "owned_by": "hearth"}


@router.get("/models", response=out.ModelList, summary="List models")
def list_models(request: HttpRequest):
    return {"object": "list", "data": [_model_card(m) for m in access.models_usable_by(request.auth.owner)]}


@router.get("/models/{model_id}", response=out.Model, summary="Retrieve a model")
def retrieve_model(request: HttpRequest, model_id: str):
    model, missing = model_or_404(model_id, request.auth.owner)
    if missing:
        return missing
    return _model_card(model)


# ---------------------------------------------------------------------------------------------------------
# The shape of a response is data kept on its job ("response"), so that a stream resumed later (GET .../{id}
# with Last-Event-ID) renders exactly the chunks the first connection would have had.


def _chat_response(body: oa.ChatCompletionRequest) -> dict[str, Any]:
    return {"dialect": "chat", "model": body.model, "created": now(), "include_usage": body.include_usage(),
            "logprobs": bool(body.logprobs), "tools": body.tools if body.uses_tools() else None,
            "max_tool_calls": 1 if body.parallel_tool_calls is False else None}


def _completion_response(body: oa.CompletionRequest) -> dict[str, Any]:
    return {"dialect": "completion", "model": body.model, "created": now(), "include_usage": body.include_usage(),
            "logprobs": body.logprobs is not None}


def _response_id(response: dict[str, Any], job_id) -> str:
    prefix = "chatcmpl" if response["dialect"] == "chat" else "cmpl"
    return f"{prefix}-{uuid.UUID(str(job_id)).hex}"


def _tool_calls(response: dict[str, Any], completion_id: str, choice: int) -> ToolCallStream | None:
    """The reader of choice `choice`'s tool calls (None without tools): its ids are seeded by the completion's id,
    so a resumed stream and the whole answer name the calls alike."""
    if not response.get("tools"):
        return None
    return ToolCallStream(response["tools"], id_seed=f"{completion_id}:{choice}",
                          max_calls=response.get("max_tool_calls"))


def _delta_fields(delta: Delta) -> dict[str, Any]:
    """A tool-call reader's delta (text, a call's start, a piece of its arguments) as a chat chunk's delta."""
    if isinstance(delta, TextDelta):
        return {"content": delta.text}
    if isinstance(delta, CallStart):
        return {"tool_calls": [out.tool_call_start(delta.index, delta.id, delta.name)]}
    return {"tool_calls": [out.tool_call_arguments(delta.index, delta.text)]}


def _renderer(response: dict[str, Any], completion_id: str, fingerprint: str, jobs: int):
    """render(index, event, answer) -> the SSE chunks of one relay event, for chat or text completions; the usage
    chunk (if asked) once all `jobs` are done.

    With tools, each choice's text goes through a `ToolCallStream`: content while no call can have started, then
    OpenAI's incremental `tool_calls` deltas (the first with index, id, type, name and arguments "", then pieces
    of the arguments). Its state is rebuilt from the job's events, so a resumed stream renders the same chunks."""
    chat = response["dialect"] == "chat"
    model, created, include_usage = response["model"], response["created"], response["include_usage"]
    readers: dict[int, ToolCallStream | None] = {}
    common = {"system_fingerprint": fingerprint, "include_usage": include_usage}

    def chunk(**fields):
        return (out.chat_chunk if chat else out.completion_chunk)(completion_id, created, model, **common, **fields)

    def reader(choice: int) -> ToolCallStream | None:
        if choice not in readers:
            readers[choice] = _tool_calls(response, completion_id, choice) if chat else None
        return readers[choice]

    def token_chunks(choice: int, event: dict[str, Any]) -> list[dict[str, Any]]:
        text, calls = event.get("text", ""), reader(choice)
        if calls is None:
            chunks = [chunk(index=choice, **({"content": text} if chat else {"text": text}))]
        else:
            chunks = [chunk(index=choice, **_delta_fields(delta)) for delta in calls.feed(text)]
        if response["logprobs"]:
            chunks = chunks or [chunk(index=choice)]  # the token's log probabilities, though it says nothing yet
            entries = event.get("logprobs") or []
            chunks[0]["choices"][0]["logprobs"] = (out.chat_logprobs(entries) if chat
                                                   else out.completion_logprobs(entries))
        return chunks

    def end_of_choice(choice: int, outcome: JobOutcome) -> list[dict[str, Any]]:
        calls = reader(choice)
        if calls is None:
            return [chunk(finish_reason=_finish(outcome), index=choice)]
        chunks = [chunk(index=choice, **_delta_fields(delta)) for delta in calls.finish()]
        finish = "tool_calls" if calls.calls() else _finish(outcome)
        return [*chunks, chunk(finish_reason=finish, index=choice)]

    def render(_index: int, event: dict[str, Any], answer: Answer) -> list[dict[str, Any]]:
        kind, choice = event["kind"], event.get("choice", 0)
        if kind == "started":
            return [chunk(role="assistant", index=choice)] if chat else []
        if kind == "token":
            return token_chunks(choice, event)
        chunks = end_of_choice(choice, answer.choice(choice)) if ends_a_choice(event) else []
        if kind == "done" and include_usage and answer.jobs_done == jobs:
            chunks.append(out.usage_chunk(completion_id, created, model, system_fingerprint=fingerprint,
                                          object="chat.completion.chunk" if chat else "text_completion",
                                          **answer.usage))
        return chunks

    return render


def _whole_response(response: dict[str, Any], completion_id: str, fingerprint: str, answer: Answer
                    ) -> dict[str, Any]:
    """The non-streamed answer of all choices."""
    model, created = response["model"], response["created"]
    outcomes = answer.in_order()
    if response["dialect"] == "chat":
        payload = out.chat_completion(completion_id, created, model, system_fingerprint=fingerprint,
                                     content=outcomes[0].text, finish_reason=_finish(outcomes[0]), **answer.usage)
        payload["choices"] = [_chat_choice(response, completion_id, i, o) for i, o in enumerate(outcomes)]
        return payload
    payload = out.completion(completion_id, created, model, system_fingerprint=fingerprint, text=outcomes[0].text,
                            finish_reason=_finish(outcomes[0]), **answer.usage)
    payload["choices"] = [
        {"text": o.text, "index": i, "finish_reason": _finish(o),
         "logprobs": out.completion_logprobs(o.logprobs) if response["logprobs"] else None}
        for i, o in enumerate(outcomes)
    ]
    return payload


async def _answer(request: HttpRequest, body, kind: str, response: dict[str, Any]):
    started, failure = await start_jobs(request, body, kind, response)
    if failure:
        return failure
    streams = started.streams
    completion_id, fingerprint = _response_id(response, started.jobs[0].id), _fingerprint(started.first)
    headers = started.headers
    events = streams[0] if len(streams) == 1 else ChoiceEvents(streams, body.n or 1)
    if not body.stream:
        answer = await collect(events)
        if answer.error:
            return error_event_response(answer.error)
        whole = JsonResponse(_whole_response(response, completion_id, fingerprint, answer))
        for name, value in headers.items():
            whole[name] = value
        return whole
    return sse_response(events, _renderer(response, completion_id, fingerprint, len(streams)), headers=headers)


@router.post("/chat/completions", summary="Create a chat completion")
async def chat_completions(request: HttpRequest, body: oa.ChatCompletionRequest):
    return await _answer(request, body, GenerationJob.Kind.CHAT, _chat_response(body))


@router.post("/completions", summary="Create a completion")
async def completions(request: HttpRequest, body: oa.CompletionRequest):
    return await _answer(request, body, GenerationJob.Kind.COMPLETION, _completion_response(body))


async def _resume(request: HttpRequest, completion_id: str, dialect: str, stream: bool, starting_after: str | None):
    """A completion by its id: streamed again from after `Last-Event-ID` (or `starting_after`), or whole."""
    prefix = "chatcmpl-" if dialect == "chat" else "cmpl-"
    job = None
    if completion_id.startswith(prefix):
        with contextlib.suppress(ValueError):
            job = await GenerationJob.objects.filter(
                id=uuid.UUID(completion_id.removeprefix(prefix)), owner=request.auth.owner).afirst()
    response = (job.request.get("response") or {}) if job else {}
    if job is None or response.get("dialect") != dialect:
        return error_response(f"No {'chat ' if dialect == 'chat' else ''}completion {completion_id!r} of yours is "
                              "known here (completions are kept while their stream is, about ten minutes after "
                              "they end).", status=404, param="completion_id", code="not_found")
    events = JobEvents(str(job.id))
    first = await events.wait_first()
    if first["kind"] == "error" and not stream:
        return error_event_response(first)
    fingerprint = _fingerprint(first)
    if not stream:
        answer = await collect(events)
        if answer.error:
            return error_event_response(answer.error)
        return JsonResponse(_whole_response(response, completion_id, fingerprint, answer))
    resume_after = parse_event_id(starting_after or request.headers.get("Last-Event-ID"))
    return sse_response(events, _renderer(response, completion_id, fingerprint, 1), resume_after=resume_after,
                        headers={"x-hearth-job": str(job.id)})


@router.get("/chat/completions/{completion_id}", summary="Retrieve or resume a chat completion")
async def chat_completion_resume(request: HttpRequest, completion_id: str, stream: bool = False,
                                 starting_after: str | None = None):
    """The completion whole, or (`stream=true`) its SSE stream again from after the `Last-Event-ID` header (or
    `starting_after`): every later chunk of the same job, no gap, no duplicate."""
    return await _resume(request, completion_id, "chat", stream, starting_after)


@router.get("/completions/{completion_id}", summary="Retrieve or resume a completion")
async def completion_resume(request: HttpRequest, completion_id: str, stream: bool = False,
                            starting_after: str | None = None):
    """As for chat completions."""
    return await _resume(request, completion_id, "completion", stream, starting_after)


@router.post("/embeddings", response=out.EmbeddingList, summary="Create embeddings")
async def embeddings(request: HttpRequest, body: oa.EmbeddingRequest):
    """One vector per input from the model's embedding context (GGUF models, llama.cpp), run by a worker."""
    model, missing = await sync_to_async(model_or_404)(body.model, request.auth.owner)
    if missing:
        return missing
    refusal = capability_refusal(model, None, frozenset({"embeddings"}))
    if refusal is not None:
        return error_response(f"Embeddings are not possible here: {refusal}", param="model",
                              code="unsupported_parameter")
    over_limit = await sync_to_async(check_concurrency)(request.auth, 1)
    if over_limit is not None:
        return over_limit
    try:
        job = await sync_to_async(embedding_start)(owner=request.auth.owner, model=model, inputs=body.input,
                                                   api_key=request.auth)
    except EngineError as error:
        return engine_error_response(error)
    events = JobEvents(str(job.id))
    result: dict[str, Any] = {}
    async for _index, event in events:
        if event["kind"] == "error":
            return error_event_response(event)
        if event["kind"] == "done":
            result = event
    vectors = result.get("embeddings")
    if vectors is None:
        return error_response("The embedding job ended without a result.", status=500, code="backend_error")
    if body.dimensions is not None and body.dimensions != result.get("dimensions"):
        return error_response(
            f"This model's embeddings have {result.get('dimensions')} dimensions; it cannot shorten them to "
            f"{body.dimensions}. Leave out 'dimensions'.", param="dimensions", code="unsupported_parameter")
    return JsonResponse(out.embedding_list(body.model, vectors, prompt_tokens=result.get("prompt_tokens", 0),
                                          encoding_format=body.encoding_format))


def _chat_choice(response: dict[str, Any], completion_id: str, index: int, outcome: JobOutcome) -> dict[str, Any]:
    """One whole chat choice: tool calls read out of the text when the request has tools (as its stream would
    have sent them), logprobs if asked."""
    content, calls = outcome.text, []
    if response.get("tools"):
        content, calls = parse_tool_calls(outcome.text, response["tools"], id_seed=f"{completion_id}:{index}",
                                          max_calls=response.get("max_tool_calls"))
    return {"index": index, "message": out.chat_message(content, calls),
            "finish_reason": "tool_calls" if calls else _finish(outcome),
            "logprobs": out.chat_logprobs(outcome.logprobs) if response["logprobs"] else None}


def _finish(outcome: JobOutcome) -> str:
    """OpenAI knows stop and length; a job cancelled from elsewhere reads as stop."""
    return out.openai_finish_reason(outcome.finish_reason) or "stop"
