"""Writes on API keys that every way in shares (the keys page, the admin API and pages, the commands): issuing and
revoking, each recorded in the audit trail (inference/audit.py)."""

from __future__ import annotations

from api.models import ApiKey
from inference.audit import audit_record


def key_create(actor, owner, name: str = "") -> tuple[ApiKey, str]:
    """Issue a key for `owner` (`actor`: who asked; None for a command); the key text is returned once."""
    key, text = ApiKey.objects.issue(owner, name=name)
    audit_record(actor, "key.create", key.display, owner=owner.get_username(), name=name)
    return key, text


def key_revoke(actor, key: ApiKey) -> bool:
    """Revoke `key`; False (and nothing recorded) when it already was."""
    if key.revoked_at is not None:
        return False
    key.revoke()
    audit_record(actor, "key.revoke", key.display, owner=key.owner.get_username(), name=key.name)
    return True
