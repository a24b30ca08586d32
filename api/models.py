"""API keys: a public prefix to find the key, and a hashed secret compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

KEY_PREFIX = "hth"  # keys look like hth_<prefix>_<secret>


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyManager(models.Manager):
    def issue(self, owner, name: str = "") -> tuple[ApiKey, str]:
        """Create a key; the full key text is returned once and never stored."""
        prefix = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        key = self.create(owner=owner, name=name, prefix=prefix, secret_hash=_hash(secret))
        return key, f"{KEY_PREFIX}_{prefix}_{secret}"

    def authenticate(self, presented: str) -> ApiKey | None:
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX:
            return None
        _, prefix, secret = parts
        key = self.select_related("owner").filter(prefix=prefix, revoked_at__isnull=True).first()
        if key is None or not key.owner.is_active:
            return None
        if not hmac.compare_digest(key.secret_hash, _hash(secret)):
            return None
        now = timezone.now()
        if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
            type(key).objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
        return key


class ApiKey(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Limits; empty means no limit. Set by an admin (Django admin), not by the key's owner.
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests this key may make per minute; empty: no limit.")
    max_concurrent_jobs = models.PositiveIntegerField(
        null=True, blank=True, help_text="Generations this key may have queued or running at once; empty: no limit.")

    objects = ApiKeyManager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{KEY_PREFIX}_{self.prefix}_… ({self.owner})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            type(self).objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=self.revoked_at)

    @property
    def display(self) -> str:
        """How the key is shown once issued: its public prefix only."""
        return f"{KEY_PREFIX}_{self.prefix}_…"


class StoredResponse(models.Model):
    """A Responses API response kept for its owner (`store`, true by default as at OpenAI): GET and DELETE
    /v1/responses/{id}, and `previous_response_id`, which continues its conversation. Kept until deleted."""

    id = models.CharField(primary_key=True, max_length=64)  # "resp_<hex>"
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="stored_responses")
    created_at = models.DateTimeField(auto_now_add=True)
    response = models.JSONField(help_text="The response object as it was answered.")
    input_items = models.JSONField(
        default=list, help_text="The conversation its model read: earlier turns' items, then this request's input.")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.id} ({self.owner})"
