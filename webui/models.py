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


class Folder(models.Model):
    """A user's folder of conversations in the sidebar. Deleting it keeps its conversations (they lose the folder)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_folders")
    name = models.CharField(max_length=80)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="webui_folder_owner_name")]

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    """A user's label for conversations; the sidebar filters by it and its search matches it."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_tags")
    name = models.CharField(max_length=40)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="webui_tag_owner_name")]

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default="New chat")
    # Organizing (the sidebar): pinned ones first, a folder, tags; archived ones leave the sidebar for /archived/.
    pinned = models.BooleanField(default=False)
    archived = models.BooleanField(default=False)
    folder = models.ForeignKey(Folder, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations")
    tags = models.ManyToManyField(Tag, blank=True, related_name="conversations")
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
    # For a reply: the model that wrote it (kept when the job row or the model is gone; "answer with another
    # model" makes it differ from the conversation's own model).
    model_name = models.CharField(max_length=128, blank=True)
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
    member of this Hearth can open, or only the members of one group (and the owner). Later messages do not change
    it; its owner revokes it (or deletes the conversation or the group, which removes its links)."""

    token = models.CharField(max_length=32, unique=True, default=share_token, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="shared_conversations")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="shares")
    group = models.ForeignKey("auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    title = models.CharField(max_length=200)
    # {"model": name or null, "system_prompt": "...", "messages": [{"role", "content", "model"}]}
    snapshot = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.title} ({self.token})"

    def readable_by(self, user) -> bool:
        """Open to every logged-in member, or to the owner and the members of its group."""
        if self.group_id is None or user.pk == self.owner_id:
            return True
        return user.groups.filter(pk=self.group_id).exists()
