"""The chat websocket: send a message, stream the reply from the relay, stop it, resume after a drop.

Client → server: {"type": "send", "conversation": id|null, "model": name, "content": text}
                 {"type": "stop", "job": id}
                 {"type": "resume", "job": id, "after": index}
Server → client: {"type": "accepted", "conversation": id, "message": id, "job": id}
                 {"type": "event", "job": id, "index": n, "event": {...relay event...}}
                 {"type": "error", "message": text, "code": code}
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from inference.engine.base import EngineError
from inference.models import GenerationJob
from inference.relay import get_relay
from inference.selectors import model_by_name
from inference.services import generation_cancel
from webui.models import Conversation, Message
from webui.services import chat_send, reply_settle

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

    async def receive_json(self, content, **kwargs) -> None:
        handlers = {"send": self.on_send, "stop": self.on_stop, "resume": self.on_resume}
        handler = handlers.get(content.get("type") if isinstance(content, dict) else None)
        if handler is None:
            await self.send_json({"type": "error", "code": "bad_message", "message": "Unknown message type."})
            return
        try:
            await handler(content)
        except EngineError as error:
            await self.send_json({"type": "error", "code": error.code, "message": error.message})

    async def on_send(self, content: dict) -> None:
        text = str(content.get("content", ""))
        if not text.strip():
            raise EngineError("Write a message first.", code="empty_message", status=400)
        if len(text) > MAX_MESSAGE_CHARS:
            raise EngineError(f"A message can have at most {MAX_MESSAGE_CHARS} characters.", code="too_long")
        model = await sync_to_async(model_by_name)(str(content.get("model", "")))
        if model is None:
            raise EngineError("Pick a model from the list first.", code="model_not_found", status=404)
        conversation = None
        if content.get("conversation"):
            conversation = await Conversation.objects.filter(
                owner=self.user, pk=int(content["conversation"])
            ).afirst()
            if conversation is None:
                raise EngineError("That conversation does not exist.", code="not_found", status=404)
        conversation, reply, job = await sync_to_async(chat_send)(
            owner=self.user, conversation=conversation, model=model, content=text
        )
        await self.send_json(
            {"type": "accepted", "conversation": conversation.pk, "title": conversation.title,
             "message": reply.pk, "job": str(job.id)}
        )
        self.stream(str(job.id), after=0)

    async def on_stop(self, content: dict) -> None:
        job = await self._own_job(content.get("job"))
        await sync_to_async(generation_cancel)(job)

    async def on_resume(self, content: dict) -> None:
        job = await self._own_job(content.get("job"))
        self.stream(str(job.id), after=max(0, int(content.get("after", 0))))

    async def _own_job(self, job_id) -> GenerationJob:
        try:
            return await GenerationJob.objects.aget(pk=uuid.UUID(str(job_id)), owner=self.user)
        except (ValueError, GenerationJob.DoesNotExist):
            raise EngineError("No such job.", code="not_found", status=404) from None

    def stream(self, job_id: str, after: int) -> None:
        previous = self.streams.pop(job_id, None)
        if previous:
            previous.cancel()
        self.streams[job_id] = asyncio.create_task(self._forward(job_id, after))

    async def _forward(self, job_id: str, after: int) -> None:
        try:
            async for index, event in get_relay().subscribe(job_id, after):
                await self.send_json({"type": "event", "job": job_id, "index": index, "event": event})
            await self._settle(job_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("forwarding job %s to the chat socket failed", job_id)
        finally:
            self.streams.pop(job_id, None)

    @sync_to_async
    def _settle(self, job_id: str) -> None:
        for message in Message.objects.select_related("job").filter(job_id=job_id):
            reply_settle(message)
