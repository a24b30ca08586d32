"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from ninja import Router

from api.auth import ApiKeyAuth
from api.errors import error_response
from api.limits import check_concurrency
from api.schemas import openai as oa
from api.streaming import JobEvents, JobOutcome, collect, error_event_response, now, sse_response
from inference import selectors
from inference.engine.base import EngineError
from inference.models import GenerationJob
from inference.services import generation_start

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


async def _start(request: HttpRequest, body, kind: str):
    model, missing = await sync_to_async(_model_or_404)(body.model)
    if missing:
        return None, missing
    over_limit = await sync_to_async(check_concurrency)(request.auth)
    if over_limit is not None:
        return None, over_limit
    try:
        job = await sync_to_async(generation_start)(
            owner=request.auth.owner, model=model, request=body.to_generation_request(), kind=kind,
            backend=getattr(body, "backend", None), api_key=request.auth,
        )
    except EngineError as error:
        return None, _engine_error_response(error)
    events = JobEvents(str(job.id))
    first = await events.wait_first()
    if first["kind"] == "error":
        return None, error_event_response(first)
    return (job, events, first), None


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


@router.post("/chat/completions", summary="Create a chat completion")
async def chat_completions(request: HttpRequest, body: oa.ChatCompletionRequest):
    started, failure = await _start(request, body, GenerationJob.Kind.CHAT)
    if failure:
        return failure
    job, events, first = started
    completion_id, created = f"chatcmpl-{job.id.hex}", now()
    include_usage = body.include_usage()

    if not body.stream:
        outcome = await collect(events)
        if outcome.error:
            return error_event_response(outcome.error)
        payload = oa.chat_completion(completion_id, created, body.model, content=outcome.text,
                                     finish_reason=_finish(outcome), prompt_tokens=outcome.prompt_tokens,
                                     completion_tokens=outcome.completion_tokens)
        response = JsonResponse(payload)
        for name, value in _hearth_headers(first).items():
            response[name] = value
        return response

    def render(_index: int, event: dict[str, Any], outcome: JobOutcome) -> list[dict[str, Any]]:
        kind = event["kind"]
        if kind == "started":
            return [oa.chat_chunk(completion_id, created, body.model, role="assistant",
                                  include_usage=include_usage)]
        if kind == "token":
            return [oa.chat_chunk(completion_id, created, body.model, content=event.get("text", ""),
                                  include_usage=include_usage)]
        if kind == "done":
            chunks = [oa.chat_chunk(completion_id, created, body.model, finish_reason=_finish(outcome),
                                    include_usage=include_usage)]
            if include_usage:
                chunks.append(oa.usage_chunk(completion_id, created, body.model, prompt_tokens=outcome.prompt_tokens,
                                             completion_tokens=outcome.completion_tokens))
            return chunks
        return []

    return sse_response(events, render, headers=_hearth_headers(first))


@router.post("/completions", summary="Create a completion")
async def completions(request: HttpRequest, body: oa.CompletionRequest):
    started, failure = await _start(request, body, GenerationJob.Kind.COMPLETION)
    if failure:
        return failure
    job, events, first = started
    completion_id, created = f"cmpl-{job.id.hex}", now()
    include_usage = body.include_usage()

    if not body.stream:
        outcome = await collect(events)
        if outcome.error:
            return error_event_response(outcome.error)
        payload = oa.completion(completion_id, created, body.model, text=outcome.text,
                                finish_reason=_finish(outcome), prompt_tokens=outcome.prompt_tokens,
                                completion_tokens=outcome.completion_tokens)
        return JsonResponse(payload)

    def render(_index: int, event: dict[str, Any], outcome: JobOutcome) -> list[dict[str, Any]]:
        kind = event["kind"]
        if kind == "token":
            return [oa.completion_chunk(completion_id, created, body.model, text=event.get("text", ""),
                                        include_usage=include_usage)]
        if kind == "done":
            chunks = [oa.completion_chunk(completion_id, created, body.model, finish_reason=_finish(outcome),
                                          include_usage=include_usage)]
            if include_usage:
                chunks.append(oa.completion_usage_chunk(completion_id, created, body.model,
                                                        prompt_tokens=outcome.prompt_tokens,
                                                        completion_tokens=outcome.completion_tokens))
            return chunks
        return []

    return sse_response(events, render, headers=_hearth_headers(first))


def _finish(outcome: JobOutcome) -> str:
    """OpenAI knows stop and length; a job cancelled from elsewhere reads as stop."""
    return oa.openai_finish_reason(outcome.finish_reason) or "stop"
