"""OpenAI's Responses API: POST /v1/responses (whole or streamed), GET and DELETE /v1/responses/{id},
GET /v1/responses/{id}/input_items.

A request is translated into a chat completion request (api/schemas/responses.py `chat_request`) and queued by
`start_jobs`, as every dialect is; the job's events become one response object or its typed SSE events
(response.created ... response.completed), each with its `sequence_number`. With `store` (OpenAI's default) the
response and the conversation its model read are kept per key owner (`StoredResponse`), before the last event goes
out, so a client may continue it at once with `previous_response_id`. Errors are OpenAI's envelope, as they are
for chat completions.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Literal

from django.http import HttpRequest, JsonResponse
from ninja import Query, Router, Schema
from pydantic import Field

from api.auth import ApiKeyAuth
from api.errors import error_response
from api.generation import start_jobs
from api.models import StoredResponse
from api.schemas import responses as rs
from api.streaming import (
    Answer,
    JobEvents,
    collect,
    ends_a_choice,
    error_event_response,
    now,
    sse_response,
    typed_sse,
)
from inference.models import GenerationJob

router = Router(auth=ApiKeyAuth(), tags=["Responses"])
log = logging.getLogger("api")


def _not_found(response_id: str, param: str = "response_id", code: str | None = None) -> JsonResponse:
    what = "Previous response" if param == "previous_response_id" else "Response"
    return error_response(f"{what} with id {response_id!r} not found.", status=404, param=param, code=code)


def _renamed(failure: JsonResponse) -> JsonResponse:
    """An error of the chat request it became, with the Responses API's parameter names."""
    try:
        error = json.loads(failure.content)["error"]
    except (ValueError, KeyError, TypeError):
        return failure
    param = rs.renamed_param(error.get("param"))
    if param == error.get("param"):
        return failure
    renamed = error_response(error["message"].replace(f"'{error['param']}'", f"'{param}'"),
                             status=failure.status_code, param=param, code=error.get("code"))
    for name, value in failure.items():
        if name.lower() not in ("content-type", "content-length"):
            renamed[name] = value
    return renamed


class _Turn:
    """One response being answered: its id, its settings (echoed), its output as it is written, and its final
    object (built once: what is answered, streamed last and stored is the same object)."""

    def __init__(self, owner, response_id: str, shape: dict[str, Any], input_items: list[dict[str, Any]]):
        self.owner = owner
        self.id = response_id
        self.shape = shape
        self.input_items = input_items
        self.output = rs.OutputStream(response_id, shape.get("tools"), max_calls=shape.get("max_calls"))
        self.answer = Answer()
        self.sequence = 0
        self.opened = False
        self.final: dict[str, Any] | None = None

    def response(self, status: str, **fields) -> dict[str, Any]:
        return rs.response_object(self.id, self.shape["created"], self.shape["settings"], status=status, **fields)

    def apply(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """One relay event: the payloads of the events it makes, numbered; the last one carries the final object."""
        self.answer.apply(event)
        payloads = []
        if not self.opened:
            self.opened = True
            payloads += [{"type": "response.created", "response": self.response("in_progress")},
                         {"type": "response.in_progress", "response": self.response("in_progress")}]
        if event["kind"] == "token":
            payloads += self.output.feed(event.get("text", ""))
        elif ends_a_choice(event):
            payloads += self._finish()
        return [self.numbered(payload) for payload in payloads]

    def _finish(self) -> list[dict[str, Any]]:
        outcome = self.answer.choice(0)
        payloads = self.output.finish(outcome.finish_reason)
        status = rs.status_of(outcome.finish_reason)
        self.final = self.response(
            status, output=self.output.items, completed_at=now() if status == "completed" else None,
            usage=rs.usage(self.answer.prompt_tokens, self.answer.completion_tokens, self.answer.cached_tokens))
        ending = "response.incomplete" if status == "incomplete" else "response.completed"
        return [*payloads, {"type": ending, "response": self.final}]

    def numbered(self, payload: dict[str, Any]) -> dict[str, Any]:
        payload = {"type": payload["type"], "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return payload

    def whole(self, answer: Answer) -> dict[str, Any]:
        """The response to a request that is not streamed: its whole text read at once."""
        self.answer = answer
        self.output.feed(answer.choice(0).text)
        self._finish()
        return self.final

    async def store(self) -> None:
        if self.final is not None and self.shape["settings"]["store"]:
            await StoredResponse.objects.acreate(id=self.id, owner=self.owner, response=self.final,
                                                 input_items=self.input_items)

    def failed(self, error: dict[str, Any]) -> dict[str, Any]:
        """The stream's last event when the generation fails midway: `response.failed`, with what was written
        (its items as they stood, "incomplete")."""
        output = [{**item, "status": "incomplete"} for item in self.output.items]
        message = error.get("message", "Generation failed.")
        return self.numbered({"type": "response.failed", "response": self.response(
            "failed", output=output, error=rs.failure(error.get("status", 500), message))})


class _Rendered:
    """A job's events, each rendered as it arrives (`turn.apply`); the batch that ends them goes out once the
    response is stored, so that a client that continues it the moment it sees response.completed finds it.
    sse_response's `render` only hands out what was rendered here."""

    def __init__(self, events: JobEvents, turn: _Turn):
        self.events, self.turn = events, turn
        self.rendered: dict[int, list[dict[str, Any]]] = {}
        self.stored = False

    async def batches(self):
        async for batch in self.events.batches():
            for index, event in batch:
                if event["kind"] != "error":
                    self.rendered[index] = self.turn.apply(event)
            if self.turn.final is not None and not self.stored:
                self.stored = True
                try:
                    await self.turn.store()
                except Exception:  # the answer still goes out; only its continuation is lost
                    log.exception("could not store response %s", self.turn.id)
            yield batch

    def render(self, index: int, _event: dict[str, Any], _answer: Answer) -> list[dict[str, Any]]:
        return self.rendered.pop(index, [])

    async def cancel(self) -> None:
        await self.events.cancel()

    async def hang_up(self) -> None:
        await self.events.hang_up()


@router.post("/responses", summary="Create a model response")
async def create_response(request: HttpRequest, body: rs.ResponseRequest):
    """A response to `input` (after the conversation of `previous_response_id`), whole or streamed."""
    owner = request.auth.owner
    history: list[dict[str, Any]] = []
    if body.previous_response_id:
        previous = await StoredResponse.objects.filter(id=body.previous_response_id, owner=owner).afirst()
        if previous is None:
            return _not_found(body.previous_response_id, "previous_response_id", "previous_response_not_found")
        history = rs.continued_items(previous.input_items, previous.response.get("output") or [])
    try:
        items = [*history, *rs.input_items(body.input)]
        chat = rs.chat_request(body, items)
    except rs.InvalidInput as refused:
        return error_response(refused.message, status=refused.status, param=refused.param, code=refused.code)
    shape = {"dialect": "responses", "model": body.model, "created": now(), "settings": rs.echo(body),
             "tools": chat.tools if chat.uses_tools() else None, "max_calls": rs.max_calls(body)}
    started, failure = await start_jobs(request, chat, GenerationJob.Kind.CHAT, shape)
    if failure:
        return _renamed(failure)
    turn = _Turn(owner, f"resp_{uuid.UUID(str(started.jobs[0].id)).hex}", shape, items)
    if body.stream:
        events = _Rendered(started.streams[0], turn)
        return sse_response(events, events.render, headers=started.headers, framing=typed_sse(turn.failed))
    answer = await collect(started.streams[0])
    if answer.error:
        return error_event_response(answer.error)
    whole = JsonResponse(turn.whole(answer))
    await turn.store()
    for name, value in started.headers.items():
        whole[name] = value
    return whole


@router.get("/responses/{response_id}", summary="Retrieve a model response")
async def retrieve_response(request: HttpRequest, response_id: str):
    """A stored response of yours (one created with `store` true, the default)."""
    stored = await StoredResponse.objects.filter(id=response_id, owner=request.auth.owner).afirst()
    if stored is None:
        return _not_found(response_id)
    return JsonResponse(stored.response)


@router.delete("/responses/{response_id}", summary="Delete a model response")
async def delete_response(request: HttpRequest, response_id: str):
    deleted, _ = await StoredResponse.objects.filter(id=response_id, owner=request.auth.owner).adelete()
    if not deleted:
        return _not_found(response_id)
    return JsonResponse(rs.deleted(response_id))


class InputItemsQuery(Schema):
    after: str | None = Field(default=None, max_length=200, description="an item id: the page after it")
    limit: int = Field(default=20, ge=1, le=100)
    order: Literal["asc", "desc"] = "desc"


@router.get("/responses/{response_id}/input_items", summary="List the input items of a model response")
async def list_input_items(request: HttpRequest, response_id: str, query: Query[InputItemsQuery]):
    """The items a stored response's model read (earlier turns' too), newest first unless `order=asc`."""
    stored = await StoredResponse.objects.filter(id=response_id, owner=request.auth.owner).afirst()
    if stored is None:
        return _not_found(response_id)
    items = list(stored.input_items)
    if query.order == "desc":
        items.reverse()
    if query.after is not None:
        position = next((i for i, item in enumerate(items) if item.get("id") == query.after), None)
        if position is None:
            return error_response(f"No input item {query.after!r} in response {response_id!r}.", status=404,
                                  param="after")
        items = items[position + 1:]
    page = items[:query.limit]
    return JsonResponse(rs.item_list(page, has_more=len(items) > len(page)))
