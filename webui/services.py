"""Writes for the chat: conversations, messages, and the jobs that answer them."""

from __future__ import annotations

from django.db import transaction

from inference.engine.base import GenerationRequest
from inference.engine.sampling import SamplingParams
from inference.models import GenerationJob, LocalModel
from inference.services import generation_start
from webui.models import Conversation, Message

TITLE_LENGTH = 60


def message_text(message: Message) -> str:
    """A reply's text lives on its job until the reply is settled; the job is the source of truth."""
    if message.content or message.job is None:
        return message.content
    return message.job.output_text


def conversation_messages(conversation: Conversation) -> list[dict[str, str]]:
    history = [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt else []
    for message in conversation.messages.select_related("job"):
        text = message_text(message)
        if text:
            history.append({"role": message.role, "content": text})
    return history


@transaction.atomic
def chat_send(*, owner, conversation: Conversation | None, model: LocalModel, content: str) -> tuple[
    Conversation, Message, GenerationJob
]:
    """Store the user's message, start the reply's job, and store the reply's (empty) message row."""
    if conversation is None:
        conversation = Conversation.objects.create(owner=owner, model=model, title=content.strip()[:TITLE_LENGTH])
    elif conversation.model_id != model.id:
        conversation.model = model
        conversation.save(update_fields=["model", "updated_at"])
    Message.objects.create(conversation=conversation, role=Message.Role.USER, content=content)
    request = GenerationRequest(messages=conversation_messages(conversation), sampling=SamplingParams(temperature=0.7),
                                fit_history=True)
    job = generation_start(owner=owner, model=model, request=request)
    reply = Message.objects.create(conversation=conversation, role=Message.Role.ASSISTANT, job=job)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=reply.created_at)
    return conversation, reply, job


def reply_settle(message: Message) -> None:
    """Copy a finished job's text onto its message row."""
    if message.job is not None and message.job.is_finished and not message.content:
        message.content = message.job.output_text
        message.save(update_fields=["content"])
