"""Pages for taking conversations out and bringing them in (webui.exports does the work)."""

from __future__ import annotations

import re

from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from webui import exports, selectors
from webui.models import Conversation, SharedConversation

FORMATS = {"json": ("application/json; charset=utf-8", "json"), "md": ("text/markdown; charset=utf-8", "md")}


def _max_import_bytes() -> int:
    return getattr(settings, "HEARTH_MAX_IMPORT_BYTES", exports.MAX_IMPORT_BYTES)


def _download(request, conversations, name: str):
    fmt = request.GET.get("format", "json")
    if fmt not in FORMATS:
        return render(request, "400.html", {"message": "Export as format=json or format=md."}, status=400)
    content_type, extension = FORMATS[fmt]
    body = exports.export_json(conversations) if fmt == "json" else exports.export_markdown(conversations)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:60] or "chat"
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="hearth-{slug}.{extension}"'
    return response


@login_required
def conversation_export(request, conversation_id: int):
    conversation = selectors.conversation_for(request.user, conversation_id)
    return _download(request, [conversation], conversation.title)


@login_required
def conversations_export(request):
    conversations = Conversation.objects.filter(owner=request.user).select_related("model").order_by("created_at")
    return _download(request, conversations, f"conversations-{timezone.localdate().isoformat()}")


@login_required
def conversations_import(request):
    """GET: the export and import page. POST: import an uploaded Hearth export or ChatGPT conversations.json."""
    context = {"conversation_count": Conversation.objects.filter(owner=request.user).count(),
               "max_mb": _max_import_bytes() // 1024**2,
               "shares": list(SharedConversation.objects.filter(owner=request.user, revoked_at=None))}
    if request.method != "POST":
        return render(request, "webui/export_import.html", context)
    upload = request.FILES.get("file")
    try:
        if upload is None:
            raise exports.ImportRefused("Choose a file to import: a Hearth export (.json) or ChatGPT's "
                                        "conversations.json.")
        if upload.size > _max_import_bytes():
            raise exports.ImportRefused(f"The file is {upload.size / 1024**2:.1f} MB; Hearth imports files of up "
                                        f"to {context['max_mb']} MB (export fewer conversations at a time).")
        kind, parsed = exports.parse_import(upload.read(), _max_import_bytes())
        created = exports.import_conversations(request.user, parsed)
    except exports.ImportRefused as error:
        flash.error(request, f"Nothing was imported: {error.message}")
        return render(request, "webui/export_import.html", context, status=400)
    count = sum(len(c["messages"]) for c in parsed)
    flash.success(request, f"Imported {len(created)} conversation{'s' if len(created) != 1 else ''} "
                           f"({count} message{'s' if count != 1 else ''}) from a {kind} export.")
    if len(created) == 1:
        return redirect("webui:conversation", created[0].pk)
    return redirect("webui:conversations_import")


# ---- sharing inside the team ----

@require_POST
@login_required
def conversation_share(request, conversation_id: int):
    conversation = selectors.conversation_for(request.user, conversation_id)
    group = None
    if request.POST.get("group"):
        group = exports.share_groups(request.user).filter(pk=request.POST["group"]).first() \
            if request.POST["group"].isdigit() else None
        if group is None:
            flash.error(request, "You can share only with a group you belong to.")
            return redirect("webui:conversation", conversation.pk)
    share = exports.share_create(conversation, group)
    readers = f"the members of {group.name}" if group else "anyone logged in to this Hearth"
    flash.success(request, f"Shared a snapshot: {readers} with the link can read it as it is now. Revoke it here "
                           "or on the Export / import page.")
    return redirect("webui:shared", share.token)


@login_required
def shared(request, token: str):
    """A snapshot, read-only, for any logged-in member (or its group's); a revoked link, or one for a group the
    reader is not in, is a 404 that says so (without telling which)."""
    share = SharedConversation.objects.select_related("owner", "group").filter(token=token).first()
    if share is None or share.revoked_at is not None or not share.readable_by(request.user):
        return render(request, "webui/share_gone.html", status=404)
    return render(request, "webui/shared.html", {"share": share, "is_owner": share.owner_id == request.user.pk,
                                                 "snapshot_messages": share.snapshot.get("messages", [])})


@require_POST
@login_required
def share_revoke(request, token: str):
    share = SharedConversation.objects.filter(token=token, owner=request.user).first()
    if share is None:
        raise Http404("No such shared link.")
    exports.share_revoke(share)
    flash.success(request, f"Revoked the shared link to “{share.title}”: it no longer opens.")
    return redirect("webui:conversations_import")
