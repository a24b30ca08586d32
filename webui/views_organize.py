"""Organizing conversations: pin, archive, folders, tags, and the Archived page. Thin: fetch the owner's rows
(another user's are a 404), call one service (webui.services), answer.

Every write is a CSRF-protected POST. A page form gets a redirect back (`next`, a path on this site); the chat
page's script (static/hearth/organize.js) asks with `Accept: application/json` and gets {"ok": true} or a 400
{"error": {"message"}}, then reloads the sidebar."""

from __future__ import annotations

from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from webui import selectors, services


def _wants_json(request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _done(request, message: str = "", **data):
    if _wants_json(request):
        return JsonResponse({"ok": True, "message": message, **data})
    if message:
        flash.success(request, message)
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()) or not target.startswith("/"):
        target = reverse("webui:chat")
    return redirect(target)


def _refused(request, error: services.ChatRefused):
    if _wants_json(request):
        return JsonResponse({"error": {"message": error.message, "code": error.code}}, status=400)
    flash.error(request, error.message)
    return _done(request)


def _tags(conversation) -> list[str]:
    return list(conversation.tags.values_list("name", flat=True))


def _flag(request, name: str) -> bool:
    return request.POST.get(name, "1") not in ("0", "false", "")


@require_POST
@login_required
def conversation_pin(request, conversation_id: int):
    conversation = selectors.conversation_for(request.user, conversation_id)
    services.conversation_pin(conversation, _flag(request, "pinned"))
    return _done(request, pinned=conversation.pinned)


@require_POST
@login_required
def conversation_archive(request, conversation_id: int):
    conversation = selectors.conversation_for(request.user, conversation_id)
    services.conversation_archive(conversation, _flag(request, "archived"))
    verb = "Archived" if conversation.archived else "Unarchived"
    return _done(request, f"{verb} “{conversation.title}”.", archived=conversation.archived)


@require_POST
@login_required
def conversation_move(request, conversation_id: int):
    conversation = selectors.conversation_for(request.user, conversation_id)
    folder_id = request.POST.get("folder", "")  # "": out of any folder
    if folder_id and not folder_id.isdigit():
        raise Http404("No such folder.")
    folder = selectors.folder_for(request.user, int(folder_id)) if folder_id else None
    services.conversation_move(conversation, folder)
    return _done(request, folder=folder.pk if folder else None)


@require_POST
@login_required
def conversation_tag(request, conversation_id: int):
    conversation = selectors.conversation_for(request.user, conversation_id)
    try:
        tag = services.conversation_tag(conversation, request.POST.get("tag", ""))
    except services.ChatRefused as error:
        return _refused(request, error)
    return _done(request, tag=tag.name, tags=_tags(conversation))


@require_POST
@login_required
def conversation_untag(request, conversation_id: int):
    conversation = selectors.conversation_for(request.user, conversation_id)
    services.conversation_untag(conversation, request.POST.get("tag", ""))
    return _done(request, tags=_tags(conversation))


@require_POST
@login_required
def folder_create(request):
    try:
        folder = services.folder_create(request.user, request.POST.get("name", ""))
    except services.ChatRefused as error:
        return _refused(request, error)
    return _done(request, folder=folder.pk)


@require_POST
@login_required
def folder_rename(request, folder_id: int):
    folder = selectors.folder_for(request.user, folder_id)
    try:
        services.folder_rename(folder, request.POST.get("name", ""))
    except services.ChatRefused as error:
        return _refused(request, error)
    return _done(request)


@require_POST
@login_required
def folder_delete(request, folder_id: int):
    folder = selectors.folder_for(request.user, folder_id)
    moved = services.folder_delete(folder)
    return _done(request, f"Deleted the folder “{folder.name}”; its {moved} conversation(s) are kept.")


@login_required
def archived(request):
    conversations = selectors.conversations_for(request.user, archived=True).order_by("-updated_at")[:1000]
    return render(request, "webui/archived.html", {"conversations": conversations})


@require_POST
@login_required
def archived_delete(request, conversation_id: int):
    conversation = selectors.conversation_for(request.user, conversation_id)
    services.conversation_delete(conversation)
    flash.success(request, f"Deleted “{conversation.title}”.")
    return redirect("webui:archived")
