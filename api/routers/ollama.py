"""Ollama's API under /api/: version, tags, show, ps, chat, generate, embed, embeddings.

Ollama clients (its Python and JS clients, IDE plugins, Open WebUI's Ollama connection, Home Assistant) work
against Hearth with one change: the API key, `Authorization: Bearer <key>` (the Python client: `headers=`).
A chat or generate request becomes an OpenAI `ChatCompletionRequest` (api/schemas/ollama.py) queued by
api/generation.py like every dialect's; the events come back as NDJSON (api/streaming.py `ndjson`) or one JSON
object. Errors are OpenAI's envelope inside, turned into Ollama's `{"error": "..."}` at the edge (api/dialects.py).

keep_alive: an empty request (no messages, no prompt, no input) loads the model in a worker, or unloads it there
with keep_alive 0; keep_alive 0 on a request unloads the model after the answer. Other durations are accepted:
Hearth keeps a model loaded until its memory budget needs the room (no timer).

pull (administrators' keys): a Hugging Face name ("hf.co/owner/name:Q4_K_M", "owner/name") becomes a pull job
(inference/pulls.py) whose row the stream reads every quarter second, in Ollama's progress lines. A client that hangs
up leaves the pull running (the library page shows it). A pulled model answers to the name it was pulled by.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from ninja import Router

from api.auth import ApiKeyAuth, StaffApiKeyAuth
from api.errors import error_response
from api.generation import engine_error_response, start_jobs
from api.limits import check_concurrency
from api.routers import openai as openai_router
from api.schemas import ollama as ol
from api.schemas.openai import CompletionRequest
from api.streaming import Answer, JobEvents, collect, error_event_response, ndjson, sse_response
from api.tools import TextDelta, ToolCallStream
from inference import access, pulls
from inference.engine.base import EngineError
from inference.models import GenerationJob
from inference.presence import loaded_backends_by_path
from inference.selection import capability_refusal, converted_path
from inference.services import model_residency_start
from inference.specs import effective_context

router = Router(auth=ApiKeyAuth(), tags=["Ollama"])
NDJSON = ndjson(ol.stream_error)


def _library_url(request: HttpRequest) -> str:
    return request.build_absolute_uri(reverse("webui:models"))


def _model_or_404(request: HttpRequest, name: str):
    """(model, None), or (None, a 404). Ollama clients add ":latest" to a name without a tag: "tiny:latest" is
    the library's "tiny" when no model has the longer name. Only models the key's owner may use are found
    (inference/access.py): another one is as unknown as a name the library does not have."""
    user = request.auth.owner
    model = access.model_for(user, name)
    if model is None and name.endswith(":latest"):
        model = access.model_for(user, name.removesuffix(":latest"))
    if model is None and "/" in name:  # the Hugging Face name it was pulled by ("hf.co/owner/name:Q4_K_M")
        model = pulls.pulled_model(name, among=access.models_usable_by(user))
    if model is not None:
        return model, None
    return None, error_response(
        f"model '{name}' not found: GET /api/tags lists this server's models; administrators add models on the "
        f"model library page, {_library_url(request)}", status=404, param="model", code="model_not_found")


def _refusal(refused: ol.RequestRefused) -> JsonResponse:
    return error_response(refused.message, param=refused.param, code=refused.code)


def _with_headers(response, headers: dict[str, str]):
    for name, value in headers.items():
        response[name] = value
    return response


# ---------------------------------------------------------------------------------------------------------
# The library


@router.get("/version", auth=None, summary="Ollama API version")
def version(request: HttpRequest):
    """The level of Ollama's API Hearth answers as (no key needed: it says nothing about the server)."""
    return JsonResponse({"version": ol.OLLAMA_API_VERSION})


@router.get("/tags", summary="List models (Ollama)")
def tags(request: HttpRequest):
    """Every model of the library the key's owner may use, as /v1/models lists them."""
    return JsonResponse({"models": [ol.model_entry(model) for model in access.models_usable_by(request.auth.owner)]})


@router.post("/show", summary="Show a model (Ollama)")
def show(request: HttpRequest, body: ol.ShowRequest):
    if not body.model_name:
        return error_response("model is required", param="model", code="missing_required_parameter")
    model, missing = _model_or_404(request, body.model_name)
    if missing:
        return missing
    capabilities = ["completion", "tools"]  # tools: any chat model, described in its system prompt
    if capability_refusal(model, None, frozenset({"embeddings"})) is None:
        capabilities.append("embedding")
    return JsonResponse(ol.show_response(model, context_length=effective_context(model), capabilities=capabilities,
                                         file_name=Path(model.path).name))


@router.get("/ps", summary="Loaded models (Ollama)")
def ps(request: HttpRequest):
    """The library's models that some live worker holds loaded, from the workers' heartbeats."""
    loaded = loaded_backends_by_path()
    running = [ol.running_entry(model, effective_context(model)) for model in access.models_usable_by(request.auth.owner)
               if loaded.get(model.path) or loaded.get(str(converted_path(model)))]
    return JsonResponse({"models": running})


# ---------------------------------------------------------------------------------------------------------
# Loading and unloading (keep_alive)


async def _residency(request: HttpRequest, model, action: str, kind: str) -> JsonResponse | None:
    """Load or unload `model` in a worker and wait until it is done; None, or the error response."""
    over_limit = await sync_to_async(check_concurrency)(request.auth, 1)
    if over_limit is not None:
        return over_limit
    try:
        job = await sync_to_async(model_residency_start)(owner=request.auth.owner, model=model, action=action,
                                                         kind=kind, api_key=request.auth)
    except EngineError as error:
        return engine_error_response(error)
    answer = await collect(JobEvents(str(job.id)))
    return error_event_response(answer.error) if answer.error else None


def _unloader(request: HttpRequest, model, kind: str) -> Callable[[], Awaitable[None]]:
    """keep_alive 0 on a request: queue the model's unload once the answer is complete (not waited for)."""

    async def unload() -> None:
        with contextlib.suppress(EngineError):
            await sync_to_async(model_residency_start)(owner=request.auth.owner, model=model, action="unload",
                                                       kind=kind, api_key=request.auth)

    return unload


class _ThenUnload:
    """A job's events; when they have all been read, the model is unloaded (not when the client hangs up)."""

    def __init__(self, events: JobEvents, unload: Callable[[], Awaitable[None]]):
        self.events, self.unload = events, unload

    async def batches(self) -> AsyncIterator[list]:
        async for batch in self.events.batches():
            yield batch
        await self.unload()

    async def cancel(self) -> None:
        await self.events.cancel()

    async def hang_up(self) -> None:
        await self.events.hang_up()


# ---------------------------------------------------------------------------------------------------------
# Chat and generate


def _piece(shape: str, model: str, text: str, **fields: Any) -> dict[str, Any]:
    if shape == "chat":
        return ol.chat_chunk(model, {"role": "assistant", "content": text}, **fields)
    return ol.generate_chunk(model, text, **fields)


def _last(shape: str, model: str, answer: Answer, began: float, *, text: str, tools, logprobs: bool,
          ) -> dict[str, Any]:
    """The object with done: true: the whole answer (not streamed) or "" (streamed), and the statistics."""
    outcome = answer.choice(0)
    stats = ol.statistics(finish_reason=outcome.finish_reason, prompt_tokens=answer.prompt_tokens,
                          completion_tokens=answer.completion_tokens, total_seconds=time.monotonic() - began,
                          **outcome.timings)
    if logprobs and text:  # a stream carried them with its pieces
        stats["logprobs"] = ol.logprobs(outcome.logprobs)
    if shape == "chat":
        return ol.chat_chunk(model, ol.assistant_message(text, tools), done=True, **stats)
    return ol.generate_chunk(model, text, done=True, **stats)


def _text_of(deltas: list) -> str:
    return "".join(delta.text for delta in deltas if isinstance(delta, TextDelta))


def _renderer(shape: str, model: str, began: float, tools, logprobs: bool):
    """render(index, event, answer) -> the NDJSON objects of one relay event. With tools, the text outside the
    calls streams as it comes (api/tools.py `ToolCallStream`) and the calls, whole (Ollama sends their arguments
    as an object), come in one object before the last."""
    calls = ToolCallStream(tools) if tools else None

    def render(_index: int, event: dict[str, Any], answer: Answer) -> list[dict[str, Any]]:
        kind = event["kind"]
        if kind == "token":
            text = event.get("text", "") if calls is None else _text_of(calls.feed(event.get("text", "")))
            if calls is not None and not text:
                return []
            extra = {"logprobs": ol.logprobs(event.get("logprobs") or [])} if logprobs else {}
            return [_piece(shape, model, text, **extra)]
        if kind != "done":
            return []
        chunks = []
        if calls is not None:
            rest, made = _text_of(calls.finish()), calls.calls()
            if rest or made:
                message: dict[str, Any] = {"role": "assistant", "content": rest}
                if made:
                    message["tool_calls"] = ol.tool_calls(
                        [{"function": {"name": call.name, "arguments": call.arguments}} for call in made])
                chunks.append(ol.chat_chunk(model, message))
        chunks.append(_last(shape, model, answer, began, text="", tools=None, logprobs=logprobs))
        return chunks

    return render


async def _generate(request: HttpRequest, body: ol.ChatRequest | ol.GenerateRequest, shape: str):
    began = time.monotonic()
    model, missing = await sync_to_async(_model_or_404)(request, body.model)
    if missing:
        return missing
    if body.is_empty:  # Ollama's load (or, with keep_alive 0, unload)
        action = "unload" if body.unloads else "load"
        failure = await _residency(request, model, action, GenerationJob.Kind.CHAT)
        return failure or JsonResponse(ol.residency_response(shape, body.model, action))
    try:
        openai_body = body.to_openai(model.name)
    except ol.RequestRefused as refused:
        return _refusal(refused)
    raw = isinstance(openai_body, CompletionRequest)
    kind = GenerationJob.Kind.COMPLETION if raw else GenerationJob.Kind.CHAT
    tools = openai_body.tools if not raw and openai_body.uses_tools() else None
    logprobs = bool(openai_body.logprobs is not None and openai_body.logprobs is not False)
    started, failure = await start_jobs(request, openai_body, kind, {"dialect": f"ollama-{shape}",
                                                                    "model": body.model})
    if failure:
        return failure
    events = started.streams[0]
    unload = _unloader(request, model, kind) if body.unloads else None
    if body.streams:
        render = _renderer(shape, body.model, began, tools, logprobs)
        return sse_response(_ThenUnload(events, unload) if unload else events, render, headers=started.headers,
                            framing=NDJSON)
    answer = await collect(events)
    if unload:
        await unload()
    if answer.error:
        return error_event_response(answer.error)
    whole = _last(shape, body.model, answer, began, text=answer.choice(0).text, tools=tools, logprobs=logprobs)
    return _with_headers(JsonResponse(whole), started.headers)


@router.post("/chat", summary="Chat (Ollama)")
async def chat(request: HttpRequest, body: ol.ChatRequest):
    """NDJSON unless `stream` is false. The model's chat template renders the messages."""
    return await _generate(request, body, "chat")


@router.post("/generate", summary="Generate (Ollama)")
async def generate(request: HttpRequest, body: ol.GenerateRequest):
    """The prompt as the user turn of the model's chat template (`raw: true`: as it is)."""
    return await _generate(request, body, "generate")


# ---------------------------------------------------------------------------------------------------------
# Embeddings: the OpenAI endpoint's job, reshaped


async def _embeddings(request: HttpRequest, body: ol.EmbedRequest | ol.EmbeddingsRequest):
    """(vectors, prompt tokens, model, began), or an error response; no input: the model loaded (or unloaded)."""
    began = time.monotonic()
    model, missing = await sync_to_async(_model_or_404)(request, body.model)
    if missing:
        return missing
    if not body.inputs:
        failure = await _residency(request, model, "unload" if body.unloads else "load", GenerationJob.Kind.EMBEDDING)
        return failure or ([], 0, model, began)
    try:
        openai_body = body.to_openai(model.name)
    except ol.RequestRefused as refused:
        return _refusal(refused)
    response = await openai_router.embeddings(request, openai_body)
    if response.status_code != 200:
        return response
    if body.unloads:
        await _unloader(request, model, GenerationJob.Kind.EMBEDDING)()
    result = json.loads(response.content)
    return [item["embedding"] for item in result["data"]], result["usage"]["prompt_tokens"], model, began


@router.post("/embed", summary="Embed (Ollama)")
async def embed(request: HttpRequest, body: ol.EmbedRequest):
    """One vector per input (GGUF models, llama.cpp), L2-normalised."""
    result = await _embeddings(request, body)
    if isinstance(result, JsonResponse):
        return result
    vectors, prompt_tokens, _model, began = result
    return JsonResponse({"model": body.model, "embeddings": vectors,
                         "total_duration": int((time.monotonic() - began) * 1e9), "load_duration": 0,
                         "prompt_eval_count": prompt_tokens})


@router.post("/embeddings", summary="Embed one prompt (Ollama, superseded by /api/embed)")
async def embeddings(request: HttpRequest, body: ol.EmbeddingsRequest):
    result = await _embeddings(request, body)
    if isinstance(result, JsonResponse):
        return result
    vectors = result[0]
    return JsonResponse({"embedding": vectors[0] if vectors else []})


# ---------------------------------------------------------------------------------------------------------
# What Hearth leaves to its model library page


def _not_here(request: HttpRequest, what: str) -> JsonResponse:
    return error_response(
        f"{what} is not available through Hearth's Ollama API: administrators add, convert and delete models on "
        f"the model library page, {_library_url(request)} (upload or import a GGUF or Hugging Face model there).",
        status=400, code="not_supported")


def _pull_state(pull_id: int) -> dict[str, Any]:
    from inference.models import ModelPull

    return ModelPull.objects.filter(pk=pull_id).values(
        "status", "phase", "files", "bytes_done", "bytes_total", "current_file", "error_code", "error_text").get()


# Out of the OpenAPI document, as Ollama's other model-changing paths: administrators' keys only, and a stream of
# progress lines (docs/api.md describes it).
@router.post("/pull", auth=StaffApiKeyAuth(), include_in_schema=False)
async def pull(request: HttpRequest, body: ol.PullRequest):
    """A Hugging Face model, as Ollama names it ("hf.co/Qwen/Qwen3-0.6B-GGUF:Q4_K_M", or "Qwen/Qwen3-0.6B-GGUF"),
    pulled into the library by a pull job; its progress as NDJSON (or, `stream: false`, {"status": "success"} at the
    end). Ollama's own registry is not available."""
    from inference.hub import HubError, parse_reference

    name = body.model_name
    if not name:
        return error_response("model is required", param="model", code="missing_required_parameter")
    try:
        repo, tag = parse_reference(name)
    except HubError:
        return error_response(
            f"{name!r} is not a Hugging Face model name: Hearth pulls from the Hugging Face Hub, for example "
            "hf.co/Qwen/Qwen3-0.6B-GGUF:Q4_K_M or Qwen/Qwen3-0.6B-GGUF (Ollama's own registry is not available). "
            f"Administrators also add models on the model library page, {_library_url(request)}.",
            param="model", code="not_supported")
    file, quant = (tag, "") if tag.lower().endswith(".gguf") else ("", tag)
    try:
        started = await sync_to_async(pulls.pull_start)(repo, file=file, quant=quant, owner=request.auth.owner)
    except EngineError as error:
        return engine_error_response(error)
    pull_id = started.pk
    if not body.streams:
        while (state := await sync_to_async(_pull_state)(pull_id))["status"] not in ("succeeded", "failed",
                                                                                       "cancelled"):
            await asyncio.sleep(0.5)
        if state["status"] == "succeeded":
            return JsonResponse({"status": "success"})
        return error_response(state["error_text"] or f"The pull was {state['status']}.",
                              status=pulls.error_status(state["error_code"]), code=state["error_code"] or None)

    async def lines() -> AsyncIterator[str]:
        progress = ol.PullProgress()
        while True:
            state = await sync_to_async(_pull_state)(pull_id)
            for line in progress.lines(state):
                yield json.dumps(line, separators=(",", ":")) + "\n"
            if state["status"] in ("succeeded", "failed", "cancelled"):
                return
            await asyncio.sleep(0.25)

    return StreamingHttpResponse(lines(), content_type="application/x-ndjson")


@router.post("/push", include_in_schema=False)
def push(request: HttpRequest):
    return _not_here(request, "Pushing a model")


@router.post("/create", include_in_schema=False)
def create(request: HttpRequest):
    return _not_here(request, "Creating a model")


@router.post("/copy", include_in_schema=False)
def copy(request: HttpRequest):
    return _not_here(request, "Copying a model")


@router.delete("/delete", include_in_schema=False)
def delete(request: HttpRequest):
    return _not_here(request, "Deleting a model")


@csrf_exempt  # an API client sends no CSRF token; this view changes nothing
def unknown_path(request: HttpRequest, *_args) -> JsonResponse:
    """A path under /api/ that neither Ollama's API nor the API docs have: 404 in Ollama's shape."""
    return JsonResponse(ol.error_body(404, {"message": f"404 page not found ({request.method} {request.path})"}),
                        status=404)
