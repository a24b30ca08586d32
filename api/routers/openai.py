"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import replace
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from ninja import Router

from api.auth import ApiKeyAuth
from api.errors import error_response
from api.limits import check_concurrency
from api.schemas import openai as oa
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
from api.tools import parse_tool_calls
from inference import selectors
from inference.engine.base import EngineError
from inference.models import GenerationJob
from inference.selection import capability_refusal
from inference.services import embedding_start, generation_start

router = Router(auth=ApiKeyAuth(), tags=["OpenAI"])


def _model_or_404(name: str):
    model = selectors.model_by_name(name)
    if model is None:
        return None, error_response(
            f"The model {name!r} does not exist. GET /v1/models lists the models of this server.",
            status=404, param="model", code="model_not_found",
        )
    return model, None


def _engine_error_response(error: EngineError):
    headers = {"Retry-After": str(error.retry_after)} if hasattr(error, "retry_after") else None
    return error_response(error.message, status=error.status, code=error.code, headers=headers)


def _prompt_requests(body) -> list:
    """One engine request per prompt (a chat has one; a completion one per prompt, in order), each with the
    request's `n` choices: one job runs them all (the worker samples choice i with seed + i)."""
    base = body.to_generation_request()
    prompts = getattr(body, "prompt", None) or [base.prompt]
    return [replace(base, prompt=prompt) for prompt in prompts]


async def _start(request: HttpRequest, body, kind: str, response: dict[str, Any]):
    """Queue the job(s), one per prompt, and wait for each one's first event: (jobs, [JobEvents], first event), or
    (None, error).

    `response` is what shapes the answer (kept on the job, so that a resumed stream renders the same)."""
    model, missing = await sync_to_async(_model_or_404)(body.model)
    if missing:
        return None, missing
    try:
        requests = _prompt_requests(body)
    except EngineError as error:  # a schema or tool list that is refused
        return None, error_response(error.message, status=error.status, code=error.code or "invalid_value",
                                    param="tools" if getattr(body, "tools", None) else "response_format")
    refused = _backend_cannot_honour(model, body, requests[0])
    if refused is not None:
        return None, refused
    over_limit = await sync_to_async(check_concurrency)(request.auth, len(requests) * requests[0].n)
    if over_limit is not None:
        return None, over_limit
    jobs, streams = [], []
    try:
        for engine_request in requests:
            jobs.append(await sync_to_async(generation_start)(
                owner=request.auth.owner, model=model, request=engine_request, kind=kind,
                backend=getattr(body, "backend", None), api_key=request.auth, response=response,
            ))
    except EngineError as error:
        for job in jobs:
            await JobEvents(str(job.id)).cancel()
        return None, _engine_error_response(error)
    streams = [JobEvents(str(job.id)) for job in jobs]
    try:
        firsts = [await events.wait_first() for events in streams]
    except BaseException:  # the client hung up (or the wait ran out): no job runs for nobody
        for events in streams:
            await asyncio.shield(events.cancel())
        raise
    failed = next((first for first in firsts if first["kind"] == "error"), None)
    if failed is not None:
        for events in streams:
            await events.cancel()
        return None, error_event_response(failed)
    return (jobs, streams, firsts[0]), None


def _backend_cannot_honour(model, body, engine_request):
    """Grammars and log probabilities are llama.cpp's: 400 naming the parameter when no backend of the model's
    chain declares them (a Hugging Face model reaches llama.cpp converted to GGUF)."""
    wanted = []
    if getattr(engine_request, "structure", None):
        wanted.append("tools" if getattr(body, "tools", None) and body.tool_choice not in (None, "auto", "none")
                      else "response_format")
    if getattr(engine_request, "logprobs", None) is not None:
        wanted.append("logprobs")
    if not wanted:
        return None
    needs = frozenset("logprobs" if want == "logprobs" else "structured_output" for want in wanted)
    refusal = capability_refusal(model, getattr(body, "backend", None), needs)
    if refusal is None:
        return None
    return error_response(f"'{wanted[0]}' is not possible here: {refusal}", param=wanted[0],
                          code="unsupported_parameter")


def _fingerprint(first: dict[str, Any]) -> str:
    """OpenAI's system_fingerprint names the serving configuration; Hearth's is the backend that served."""
    return f"hearth-{first.get('backend') or 'unknown'}"


def _model_card(model) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": int(model.created_at.timestamp()), "owned_by": "hearth"}


def _hearth_headers(first: dict[str, Any]) -> dict[str, str]:
    """x-hearth-backend: the backend that serves; x-hearth-fallback: those tried before it, and why not."""
    headers = {"x-hearth-backend": first["backend"]} if first.get("backend") else {}
    if first.get("fallbacks"):
        headers["x-hearth-fallback"] = "; ".join(
            f"{step['backend']}: {step['reason']}" for step in first["fallbacks"])[:1000]
    return headers


@router.get("/models", response=oa.ModelList, summary="List models")
def list_models(request: HttpRequest):
    return {"object": "list", "data": [_model_card(m) for m in selectors.model_list()]}


@router.get("/models/{model_id}", response=oa.Model, summary="Retrieve a model")
def retrieve_model(request: HttpRequest, model_id: str):
    model, missing = _model_or_404(model_id)
    if missing:
        return missing
    return _model_card(model)


# ---------------------------------------------------------------------------------------------------------
# The shape of a response is data kept on its job ("response"), so that a stream resumed later (GET .../{id}
# with Last-Event-ID) renders exactly the chunks the first connection would have had.


def _chat_response(body: oa.ChatCompletionRequest) -> dict[str, Any]:
    return {"dialect": "chat", "model": body.model, "created": now(), "include_usage": body.include_usage(),
            "logprobs": bool(body.logprobs), "tools": body.tools if body.uses_tools() else None}


def _completion_response(body: oa.CompletionRequest) -> dict[str, Any]:
    return {"dialect": "completion", "model": body.model, "created": now(), "include_usage": body.include_usage(),
            "logprobs": body.logprobs is not None}


def _response_id(response: dict[str, Any], job_id) -> str:
    prefix = "chatcmpl" if response["dialect"] == "chat" else "cmpl"
    return f"{prefix}-{uuid.UUID(str(job_id)).hex}"


def _renderer(response: dict[str, Any], completion_id: str, fingerprint: str, jobs: int):
    """render(index, event, answer) -> the SSE chunks of one relay event, for chat or text completions; the usage
    chunk (if asked) once all `jobs` are done."""
    chat = response["dialect"] == "chat"
    model, created, include_usage = response["model"], response["created"], response["include_usage"]
    tools = response.get("tools")
    common = {"system_fingerprint": fingerprint, "include_usage": include_usage}

    def chunk(**fields):
        return (oa.chat_chunk if chat else oa.completion_chunk)(completion_id, created, model, **common, **fields)

    def end_of_choice(choice: int, outcome: JobOutcome) -> list[dict[str, Any]]:
        chunks, finish = [], _finish(outcome)
        if tools:
            content, calls = parse_tool_calls(outcome.text, tools, id_seed=f"{completion_id}:{choice}")
            delta_chunk = chunk(content=content, index=choice)
            if calls:
                delta_chunk["choices"][0]["delta"]["tool_calls"] = [
                    {**call, "index": position} for position, call in enumerate(calls)]
                finish = "tool_calls"
            if content is not None or calls:
                chunks.append(delta_chunk)
        chunks.append(chunk(finish_reason=finish, index=choice))
        return chunks

    def render(_index: int, event: dict[str, Any], answer: Answer) -> list[dict[str, Any]]:
        kind, choice = event["kind"], event.get("choice", 0)
        if kind == "started":
            return [chunk(role="assistant", index=choice)] if chat else []
        if kind == "token":
            if tools:  # a tool call is only known whole: the text comes with the last chunk
                return []
            piece = chunk(index=choice, **({"content": event.get("text", "")} if chat else
                                           {"text": event.get("text", "")}))
            if response["logprobs"]:
                entries = event.get("logprobs") or []
                piece["choices"][0]["logprobs"] = (oa.chat_logprobs(entries) if chat
                                                   else oa.completion_logprobs(entries))
            return [piece]
        chunks = end_of_choice(choice, answer.choice(choice)) if ends_a_choice(event) else []
        if kind == "done" and include_usage and answer.jobs_done == jobs:
            usage_chunk = oa.usage_chunk if chat else oa.completion_usage_chunk
            chunks.append(usage_chunk(completion_id, created, model, system_fingerprint=fingerprint, **answer.usage))
        return chunks

    return render


def _whole_response(response: dict[str, Any], completion_id: str, fingerprint: str, answer: Answer
                    ) -> dict[str, Any]:
    """The non-streamed answer of all choices."""
    model, created = response["model"], response["created"]
    outcomes = answer.in_order()
    if response["dialect"] == "chat":
        payload = oa.chat_completion(completion_id, created, model, system_fingerprint=fingerprint,
                                     content=outcomes[0].text, finish_reason=_finish(outcomes[0]), **answer.usage)
        payload["choices"] = [_chat_choice(response, completion_id, i, o) for i, o in enumerate(outcomes)]
        return payload
    payload = oa.completion(completion_id, created, model, system_fingerprint=fingerprint, text=outcomes[0].text,
                            finish_reason=_finish(outcomes[0]), **answer.usage)
    payload["choices"] = [
        {"text": o.text, "index": i, "finish_reason": _finish(o),
         "logprobs": oa.completion_logprobs(o.logprobs) if response["logprobs"] else None}
        for i, o in enumerate(outcomes)
    ]
    return payload


async def _answer(request: HttpRequest, body, kind: str, response: dict[str, Any]):
    started, failure = await _start(request, body, kind, response)
    if failure:
        return failure
    jobs, streams, first = started
    completion_id, fingerprint = _response_id(response, jobs[0].id), _fingerprint(first)
    headers = {**_hearth_headers(first), "x-hearth-job": str(jobs[0].id)}
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


@router.post("/embeddings", response=oa.EmbeddingList, summary="Create embeddings")
async def embeddings(request: HttpRequest, body: oa.EmbeddingRequest):
    """One vector per input from the model's embedding context (GGUF models, llama.cpp), run by a worker."""
    model, missing = await sync_to_async(_model_or_404)(body.model)
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
        return _engine_error_response(error)
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
    return JsonResponse(oa.embedding_list(body.model, vectors, prompt_tokens=result.get("prompt_tokens", 0),
                                          encoding_format=body.encoding_format))


def _chat_choice(response: dict[str, Any], completion_id: str, index: int, outcome: JobOutcome) -> dict[str, Any]:
    """One whole chat choice: tool calls parsed out of the text when the request has tools, logprobs if asked."""
    tools = response.get("tools")
    content, calls = (parse_tool_calls(outcome.text, tools, id_seed=f"{completion_id}:{index}") if tools
                      else (outcome.text, []))
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {"index": index, "message": message, "finish_reason": "tool_calls" if calls else _finish(outcome),
            "logprobs": oa.chat_logprobs(outcome.logprobs) if response["logprobs"] else None}


def _finish(outcome: JobOutcome) -> str:
    """OpenAI knows stop and length; a job cancelled from elsewhere reads as stop."""
    return oa.openai_finish_reason(outcome.finish_reason) or "stop"
