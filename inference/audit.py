"""The audit trail: one call records who did what to which thing; admins read the list (webui)."""

from __future__ import annotations

from inference.models import AuditEvent


def audit_record(actor, action: str, target: str = "", **details) -> AuditEvent:
    """Record an action. `actor` is the user who acted (None for the system: a command, a worker)."""
    name = getattr(actor, "get_username", lambda: "")() if actor is not None else "system"
    return AuditEvent.objects.create(
        actor=actor if getattr(actor, "pk", None) else None, actor_name=name or "system",
        action=action, target=str(target)[:255], details=details,
    )
