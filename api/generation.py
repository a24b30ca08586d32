"""The dialect-neutral core of every generation endpoint: find the model, check what the backend can honour and
the key's limits, queue the job(s), and wait for the first event.

Every dialect (OpenAI chat and text completions, the Responses API, Anthropic Messages, Ollama) translates its
request into the OpenAI schema's `ChatCompletionRequest` or `CompletionRequest` (api/schemas/openai.py), whose
`to_generation_request()` is the one way a request becomes a `GenerationRequest`, and calls `start_jobs` here.
The answer comes back as relay events, added up by api/streaming.py's `collect` (whole answers) or rendered
event by event (streams). Failures come back as OpenAI-shaped error responses, which api/dialects.py turns
into the caller's dialect at the edge.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse

from api.errors import error_response
from api.limits import check_concurrency
from api.streaming import JobEvents, error_event_response
from inference import access
from inference.engine.backends import find_backend, unknown_backend
from inference.engine.base import EngineError
from inference.selection import capability_refusal
from inference.services import generation_start


def model_or_404(name: str, user):
    """(model, None), or (None, a 404 `model_not_found`) for a name this server does not serve to `user`: one it
    does not have and one the user may not use (inference/access.py) get the same answer."""
    model = access.model_for(user, name)
    if model is None:
        return None, error_response(
            f"The model {name!r} does not exist. GET /v1/models lists the models of this server.",
            status=404, param="model", code="model_not_found",
        )
    return model, None


def engine_error_response(error: EngineError) -> JsonResponse:
    """The error's status and code; Retry-After when it has one, and its own headers (a used-up token quota's
    x-ratelimit-*-tokens)."""
    headers = {"Retry-After": str(error.retry_after)} if hasattr(error, "retry_after") else {}
    headers.update(getattr(error, "headers", None) or {})
    return error_response(error.message, status=error.status, code=error.code, headers=headers or None)


def hearth_headers(first: dict[str, Any]) -> dict[str, str]:
    """x-hearth-backend: the backend that serves; x-hearth-fallback: those tried before it, and why not."""
    headers = {"x-hearth-backend": first["backend"]} if first.get("backend") else {}
    if first.get("fallbacks"):
        headers["x-hearth-fallback"] = "; ".join(
            f"{step['backend']}: {step['reason']}" for step in first["fallbacks"])[:1000]
    return headers


@dataclass
class Started:
    """Jobs queued and running: one per prompt (a chat has one), their event streams, and the first event."""

    jobs: list
    streams: list[JobEvents]
    first: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        """x-hearth-*, and where a token quota applies, the binding one's x-ratelimit-*-tokens (after this
        request's reservation)."""
        quota = next((job.quota for job in reversed(self.jobs) if getattr(job, "quota", None)), None)
        return {**hearth_headers(self.first), "x-hearth-job": str(self.jobs[0].id), **(quota.headers if quota else {})}


def _prompt_requests(body) -> list:
    """One engine request per prompt (a chat has one; a completion one per prompt, in order), each with the
    request's `n` choices: one job runs them all (the worker samples choice i with seed + i)."""
    base = body.to_generation_request()
    prompts = getattr(body, "prompt", None) or [base.prompt]
    return [replace(base, prompt=prompt) for prompt in prompts]


async def start_jobs(request: HttpRequest, body, kind: str, response: dict[str, Any]
                     ) -> tuple[Started | None, JsonResponse | None]:
    """Queue the job(s) of `body` (a ChatCompletionRequest or CompletionRequest) and wait for each one's first
    event: (Started, None), or (None, an error response).

    `response` is what shapes the answer (kept on the job, so that a resumed stream renders the same)."""
    model, missing = await sync_to_async(model_or_404)(body.model, request.auth.owner)
    if missing:
        return None, missing
    backend = getattr(body, "backend", None)
    if backend and find_backend(backend) is None:
        return None, error_response(unknown_backend(backend), param="backend", code="invalid_value")
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
    jobs = []
    try:
        for engine_request in requests:
            jobs.append(await sync_to_async(generation_start)(
                owner=request.auth.owner, model=model, request=engine_request, kind=kind,
                backend=getattr(body, "backend", None), api_key=request.auth, response=response,
            ))
    except EngineError as error:
        for job in jobs:
            await JobEvents(str(job.id)).cancel()
        return None, engine_error_response(error)
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
    return Started(jobs, streams, firsts[0]), None


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
