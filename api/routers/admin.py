"""Administrator endpoints (Hearth's own, not OpenAI's): every key with its limits and usage, revocation.

Only keys of staff users may call them; any other valid key gets 403.
"""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router, Schema

from api.auth import StaffApiKeyAuth
from api.errors import error_response
from api.selectors import key_usage_dict, keys_with_usage
from api.services import key_revoke

router = Router(auth=StaffApiKeyAuth(), tags=["Hearth administration"])


class KeyUsage(Schema):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class KeyInfo(Schema):
    id: int
    prefix: str
    name: str
    owner: str
    created: int
    last_used: int | None
    revoked: int | None
    requests_per_minute: int | None
    max_concurrent_jobs: int | None
    usage: KeyUsage


class KeyList(Schema):
    object: str = "list"
    data: list[KeyInfo]


@router.get("/api_keys", response=KeyList, summary="List every API key with its usage (administrators)")
def admin_list_keys(request: HttpRequest):
    return {"object": "list", "data": [key_usage_dict(k) for k in keys_with_usage()]}


@router.post("/api_keys/{key_id}/revoke", response=KeyInfo, summary="Revoke an API key (administrators)")
def admin_revoke_key(request: HttpRequest, key_id: int):
    key = keys_with_usage().filter(pk=key_id).first()
    if key is None:
        return error_response(f"No API key with id {key_id}.", status=404, param="key_id", code="not_found")
    key_revoke(request.auth.owner, key)
    return key_usage_dict(key)
