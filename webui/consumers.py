"""The chat websocket: send a message, stream the reply from the relay, stop it, resume after a drop.

Client → server: {"type": "send", "conversation": id|null, "model": name, "content": text,
                  "system_prompt": text (optional), "sampling": {"temperature": 0.7, ...} (optional)}
                 {"type": "regenerate", "message": reply id, "model": name}  (a new version of a reply)
                 {"type": "regenerate", "message": reply id, "answer_with": name}  (a new version by another
                  model, named on the reply; the conversation keeps its model)
                 {"type": "edit", "message": user message id, "content": text, "model": name}  (a new version)
                 {"type": "complete", "model": name, "prompt": text, "sampling": {...}}  (the playground)
                 {"type": "stop", "job": id}  (the job's owner, or an admin)
                 {"type": "resume", "job": id, "after": index}  (the job's owner, or an admin: the jobs page)
Server → client: {"type": "accepted", "conversation": id, "title": text, "message": reply id, "job": id,
                  "model": the reply's model name, "user_message": id (send and edit), "versions": {"index", "count", "prev", "next"} of
                  the reply (regenerate) or of the user message (edit)}
                 {"type": "event", "job": id, "index": n, "event": {...relay event...}}
                 {"type": "queue", "job": id, "position": n}  (until the job's first event: its place in line;
                  null once a worker has it and loads the model; the page then shows "reading the prompt" from
                  the "started" event until the first token)
                 {"type": "error", "message": text, "code": code, "param": where (invalid text only)}
Messages are JSON text frames whose strings hold no NUL or lone surrogate (config.text); any other frame gets an
error message back, and the socket stays open.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from config import text as request_text
from config.paths import paths_for
from inference.access import model_for
from inference.engine.base import EngineError, GenerationRequest
from inference.following import follow
from inference.leases import queue_positions
from inference.models import GenerationJob
from inference.outages import outage_message, outage_seen
from inference.relay import RelayUnavailable, relay_unavailable_event
from inference.services import generation_cancel, generation_start
from webui.models import Conversation, Message
from webui.services import (
    chat_edit,
    chat_regenerate,
    chat_send,
    conversation_tree,
    reply_settle,
    request_options,
    sampling_clean,
)

log = logging.getLogger(__name__)
MAX_MESSAGE_CHARS = 200_000


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.streams: dict[str, asyncio.Task] = {}
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=4401)
            return
        await self.accept()

    async def disconnect(self, code: int) -> None:
        # A dropped socket does not stop the reply: the page resumes it after reconnecting.
        for task in getattr(self, "streams", {}).values():
            task.cancel()

    # Message decoding: strict JSON with storable text (config.text). A message that is not one gets an error
    # message back and the socket stays open, as it does when handling a message fails unexpectedly.
    @classmethod
    async def decode_json(cls, text_data):
        return request_text.loads(text_data)

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        if text_data is None:
            await self.send_json({"type": "error", "code": "bad_message",
                                  "message": "Send messages as JSON text frames, not binary ones."})
            return
        try:
            content = await self.decode_json(text_data)
        except request_text.InvalidText as error:
            await self.send_json({"type": "error", "code": "invalid_text", "message": error.message,
                                  "param": error.param})
            return
        except request_text.InvalidJson as error:
            await self.send_json({"type": "error", "code": "bad_message",
                                  "message": f"That message is not valid JSON: {error.message}."})
            return
        try:
            await self.receive_json(content, **kwargs)
        except Exception:
            log.exception("the chat socket could not handle a %r message", _kind(content))
            await self.send_json({"type": "error", "code": "internal_error",
                                  "message": "Hearth could not handle that message; the server log has the details."})

    async def encode_json(self, content) -> str:
        """Outgoing error texts show server file paths to admins only (config.paths)."""
        if content.get("type") == "error" and isinstance(content.get("message"), str):
            content = {**content, "message": paths_for(content["message"], self.user)}
        elif content.get("type") == "event" and content["event"].get("kind") == "error":
            event = content["event"]
            content = {**content, "event": {**event, "message": paths_for(str(event.get("message", "")), self.user)}}
        return await super().encode_json(content)

    async def receive_json(self, content, **kwargs) -> None:
        handlers = {"send": self.on_send, "stop": self.on_stop, "resume": self.on_resume,
                    "regenerate": self.on_regenerate, "edit": self.on_edit, "complete": self.on_complete}
        handler = handlers.get(content.get("type") if isinstance(content, dict) else None)
        if handler is None:
            await self.send_json({"type": "error", "code": "bad_message", "message": "Unknown message type."})
            return
        try:
            await handler(content)
        except EngineError as error:
            await self.send_json({"type": "error", "code": error.code, "message": error.message})
        except Exception as error:  # the socket stays open whatever happened
            service = outage_seen(error)
            if service is None:
                log.exception("chat socket message %r failed", content.get("type"))
                await self.send_json({"type": "error", "code": "internal_error",
                                      "message": "Something went wrong on the server; try again."})
            else:
                await self.send_json({"type": "error", "code": "service_unavailable",
                                      "message": outage_message(service)})

    async def _model(self, content: dict, key: str = "model"):
        # A model this user may not use is as unknown as one the library does not have (inference/access.py).
        name = content.get(key, "")
        model = await sync_to_async(model_for)(self.user, name if isinstance(name, str) else "")
        if model is None and key != "model":
            raise EngineError(f"There is no model called “{str(name)[:128]}” to answer with; pick one from the list.",
                              code="model_not_found", status=404)
        if model is None:
            raise EngineError("Pick a model from the list first.", code="model_not_found", status=404)
        return model

    @staticmethod
    def _text(content: dict, key: str = "content") -> str:
        text = str(content.get(key, ""))
        if not text.strip():
            raise EngineError("Write a message first.", code="empty_message", status=400)
        if len(text) > MAX_MESSAGE_CHARS:
            raise EngineError(f"A message can have at most {MAX_MESSAGE_CHARS} characters.", code="too_long")
        return text

    async def on_send(self, content: dict) -> None:
        text = self._text(content)
        model = await self._model(content)
        conversation = None
        if content.get("conversation"):
            conversation = await Conversation.objects.filter(
                owner=self.user, pk=_int(content["conversation"])
            ).afirst()
            if conversation is None:
                raise EngineError("That conversation does not exist.", code="not_found", status=404)
        system_prompt = content.get("system_prompt")
        conversation, user_message, reply, job = await sync_to_async(chat_send)(
            owner=self.user, conversation=conversation, model=model, content=text,
            system_prompt=None if system_prompt is None else str(system_prompt), sampling=content.get("sampling"),
        )
        await self.send_json(
            {"type": "accepted", "conversation": conversation.pk, "title": conversation.title,
             "user_message": user_message.pk, "message": reply.pk, "job": str(job.id), "model": model.name}
        )
        self.stream(str(job.id), after=0)

    async def _own_message(self, content: dict) -> Message:
        message = await Message.objects.select_related("conversation", "parent").filter(
            conversation__owner=self.user, pk=_int(content.get("message"))
        ).afirst()
        if message is None:
            raise EngineError("That message does not exist.", code="not_found", status=404)
        return message

    async def on_regenerate(self, content: dict) -> None:
        message = await self._own_message(content)
        # "answer_with": this reply only, by another model; the conversation keeps its own ("model").
        answer_with = content.get("answer_with") not in (None, "")
        model = await self._model(content, "answer_with" if answer_with else "model")
        reply, job = await sync_to_async(chat_regenerate)(owner=self.user, reply=message, model=model,
                                                          chat_model=not answer_with)
        versions = await sync_to_async(lambda: conversation_tree(message.conversation).versions(reply.pk))()
        await self.send_json({"type": "accepted", "conversation": message.conversation_id,
                              "title": message.conversation.title, "message": reply.pk, "job": str(job.id),
                              "versions": versions, "model": model.name})
        self.stream(str(job.id), after=0)

    async def on_edit(self, content: dict) -> None:
        message = await self._own_message(content)
        text = self._text(content)
        model = await self._model(content)
        edited, reply, job = await sync_to_async(chat_edit)(owner=self.user, message=message, content=text,
                                                            model=model)
        versions = await sync_to_async(lambda: conversation_tree(message.conversation).versions(edited.pk))()
        await self.send_json({"type": "accepted", "conversation": message.conversation_id,
                              "title": message.conversation.title, "user_message": edited.pk,
                              "message": reply.pk, "job": str(job.id), "versions": versions,
                              "model": model.name})
        self.stream(str(job.id), after=0)

    async def on_complete(self, content: dict) -> None:
        prompt = self._text(content, "prompt")
        model = await self._model(content)
        sampling, max_tokens = request_options(sampling_clean(content.get("sampling")))
        request = GenerationRequest(prompt=prompt, sampling=sampling, max_tokens=max_tokens or 256)
        job = await sync_to_async(generation_start)(owner=self.user, model=model, request=request,
                                                    kind=GenerationJob.Kind.COMPLETION)
        await self.send_json({"type": "accepted", "job": str(job.id)})
        self.stream(str(job.id), after=0)

    async def on_stop(self, content: dict) -> None:
        job = await self._own_job(content.get("job"))
        await sync_to_async(generation_cancel)(job)

    async def on_resume(self, content: dict) -> None:
        job = await self._own_job(content.get("job"))
        self.stream(str(job.id), after=max(0, int(content.get("after", 0))))

    async def _own_job(self, job_id) -> GenerationJob:
        try:
            jobs = GenerationJob.objects.all() if self.user.is_staff else GenerationJob.objects.filter(owner=self.user)
            return await jobs.aget(pk=uuid.UUID(str(job_id)))
        except (ValueError, GenerationJob.DoesNotExist):
            raise EngineError("No such job.", code="not_found", status=404) from None

    def stream(self, job_id: str, after: int) -> None:
        previous = self.streams.pop(job_id, None)
        if previous:
            previous.cancel()
        self.streams[job_id] = asyncio.create_task(self._forward(job_id, after))

    async def _forward(self, job_id: str, after: int) -> None:
        """Send the job's events from after `after` to the page (following the job keeps it alive), then settle
        its reply. The relay unreachable for too long ends the reply with an error event."""
        try:
            interval = settings.HEARTH_STREAM_INTERVAL_MS / 1000
            try:
                started = after > 0
                place = ...  # the last place in line sent (None: a worker has it; ...: nothing sent yet)
                if not started:
                    place = await self._send_queue_position(job_id, place)
                async for batch in follow(job_id, after, interval=interval):
                    if not batch and not started:
                        place = await self._send_queue_position(job_id, place)
                    for index, event in batch:
                        started = True
                        after = index
                        await self.send_json({"type": "event", "job": job_id, "index": index, "event": event})
                        if event.get("kind") == "started" and event.get("dropped_messages"):
                            await Message.objects.filter(job_id=job_id).aupdate(
                                dropped_messages=int(event["dropped_messages"]))
            except RelayUnavailable as error:
                await self.send_json({"type": "event", "job": job_id, "index": after + 1,
                                      "event": relay_unavailable_event(error)})
                return
            await self._settle(job_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("forwarding job %s to the chat socket failed", job_id)
        finally:
            self.streams.pop(job_id, None)

    async def _send_queue_position(self, job_id: str, last) -> int | None:
        """Until its first event, where the job stands in line (users are served in turn); out of the line and
        not started yet (position null), a worker has it and is loading the model."""
        position = (await database_sync_to_async(queue_positions)()).get(job_id)
        if position != last:  # sent when it changes
            await self.send_json({"type": "queue", "job": job_id, "position": position})
        return position

    @sync_to_async
    def _settle(self, job_id: str) -> None:
        for message in Message.objects.select_related("job").filter(job_id=job_id):
            reply_settle(message)


def _kind(content) -> str:
    return str(content.get("type"))[:40] if isinstance(content, dict) else type(content).__name__


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EngineError("Expected a number.", code="bad_message", status=400) from None
