"""Bearer API keys for /v1. The auth callback returns the key (its owner is key.owner); None gives 401."""

from __future__ import annotations

from ninja.security import HttpBearer

from api.models import ApiKey


class ApiKeyAuth(HttpBearer):
    def authenticate(self, request, token: str) -> ApiKey | None:
        return ApiKey.objects.authenticate(token)
