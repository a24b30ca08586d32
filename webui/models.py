"""Conversations, stored per user as rows: one row per message, arranged as a tree.

Every message points at the message it follows (`parent`; None for the first). Regenerating a reply or
editing a message adds a sibling (same parent) instead of overwriting, so every version is kept; the
conversation's `leaf` is the last message of the branch on screen, and the path from the root to it is
the thread the model sees.
"""

from __future__ import annotations

import secrets
import uuid

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default="New chat")
    model = models.ForeignKey("inference.LocalModel", null=True, blank=True, on_delete=models.SET_NULL)
    system_prompt = models.TextField(blank=True)
    # Sampling for this conversation's replies: {"temperature": 0.7, "top_p": 1.0, "max_tokens": null, ...}.
    sampling = models.JSONField(default=dict, blank=True)
    leaf = models.ForeignKey("Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    job = models.ForeignKey("inference.GenerationJob", null=True, blank=True, on_delete=models.SET_NULL)
    # For a reply: how many of the oldest turns were left out of its prompt to fit the model's context.
    dropped_messages = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["conversation", "id"])]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class Upload(models.Model):
    """A model file arriving in chunks. The bytes go to `MODELS_DIR/.uploads/<id>.part`; a reload or a dropped
    connection resumes from `received`. Nothing is imported until the whole file is validated.

    A Hugging Face directory sent as separate files lists them in `files` ({name, size, received} each); they
    arrive in the staging folder `MODELS_DIR/.uploads/<id>/`, and `size`/`received` are the totals."""

    class Status(models.TextChoices):
        RECEIVING = "receiving"
        IMPORTED = "imported"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="model_uploads")
    filename = models.CharField(max_length=255)
    name = models.CharField(max_length=128)
    size = models.BigIntegerField()
    received = models.BigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVING)
    error_text = models.TextField(blank=True)
    files = models.JSONField(default=list, blank=True)
    model = models.ForeignKey("inference.LocalModel", null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.filename} ({self.received}/{self.size})"


def share_token() -> str:
    return secrets.token_urlsafe(18)


class SharedConversation(models.Model):
    """A read-only snapshot of a conversation's thread on screen, at a link (`/s/<token>/`) that any logged-in
    member of this Hearth can open. Later messages do not change it; its owner revokes it (or deletes the
    conversation, which removes its links)."""

    token = models.CharField(max_length=32, unique=True, default=share_token, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="shared_conversations")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="shares")
    title = models.CharField(max_length=200)
    # {"model": name or null, "system_prompt": "...", "messages": [{"role", "content", "model"}]}
    snapshot = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.title} ({self.token})"
