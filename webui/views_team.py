"""Admin pages of a team: groups and their members, who may use a model, and the audit trail.

Admins only (members get 403, as on the users page); every change goes through inference/access.py's writes,
which record it in the audit trail.
"""

from __future__ import annotations

from django.contrib import messages as flash
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from inference import access
from inference.models import AuditEvent, LocalModel
from webui.views import admin_required

AUDIT_PAGE_SIZE = 50


def _group_or_404(group_id: int) -> Group:
    group = Group.objects.filter(pk=group_id).first()
    if group is None:
        raise Http404("No such group.")
    return group


@admin_required
def groups(request):
    """The list of groups (members, models), and a form to create one."""
    if request.method == "POST":
        try:
            group = access.group_create(request.user, request.POST.get("name", ""))
        except ValidationError as error:
            flash.error(request, " ".join(error.messages))
            return redirect("webui:groups")
        flash.success(request, f"Created the group {group.name}; add its members below.")
        return redirect("webui:group", group.pk)
    rows = Group.objects.order_by("name").annotate(members=Count("user", distinct=True),
                                                   model_count=Count("models", distinct=True))
    return render(request, "webui/groups.html", {"groups": rows})


@admin_required
def group(request, group_id: int):
    """One group: its members (add, remove), its models, rename, delete."""
    group = _group_or_404(group_id)
    if request.method == "POST":
        action = request.POST.get("action", "")
        try:
            if action == "rename":
                access.group_rename(request.user, group, request.POST.get("name", ""))
                flash.success(request, f"Renamed the group to {group.name}.")
            elif action == "delete":
                name = group.name
                access.group_delete(request.user, group)
                flash.success(request, f"Deleted the group {name}; its members keep their accounts.")
                return redirect("webui:groups")
            elif action == "add":
                people = list(access.users_by_pk(request.POST.getlist("user")))
                access.group_members_change(request.user, group, add=people)
                flash.success(request, f"Added {', '.join(p.get_username() for p in people) or 'nobody'} to "
                                       f"{group.name}.")
            elif action == "remove":
                people = list(access.users_by_pk(request.POST.getlist("user")))
                access.group_members_change(request.user, group, remove=people)
                flash.success(request, f"Removed {', '.join(p.get_username() for p in people) or 'nobody'} from "
                                       f"{group.name}.")
            else:
                flash.error(request, "Unknown action.")
        except ValidationError as error:
            flash.error(request, " ".join(error.messages))
        return redirect("webui:group", group.pk)
    members = group.user_set.order_by("username")
    return render(request, "webui/group.html", {
        "group": group,
        "members": members,
        "others": get_user_model().objects.exclude(pk__in=members.values("pk")).order_by("username"),
        "models": group.models.order_by("name"),
    })


@require_POST
@admin_required
def model_access(request, name: str):
    """The model page's Access form: everyone, or only the ticked groups' members (admins always may)."""
    model = LocalModel.objects.filter(name=name).first()
    if model is None:
        raise Http404("No such model.")
    everyone = request.POST.get("access") == "everyone"
    chosen = Group.objects.filter(pk__in=[pk for pk in request.POST.getlist("groups") if pk.isdigit()])
    access.model_access_set(request.user, model, open_to_everyone=everyone, groups=chosen)
    if everyone:
        flash.success(request, f"Everyone may use {model.name}.")
    else:
        names = ", ".join(group.name for group in chosen)
        flash.success(request, f"Only {'the members of ' + names + ' and ' if names else ''}admins may use "
                               f"{model.name}.")
    return redirect("webui:model_detail", name=model.name)


def _detail_items(details) -> list[tuple[str, str]]:
    """An event's details as a person reads them: lists joined, nothing for what is empty."""
    if not isinstance(details, dict):
        return []
    items = []
    for key, value in details.items():
        if isinstance(value, list | tuple):
            value = ", ".join(str(v) for v in value) or "none"
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        if value not in ("", None):
            items.append((key.replace("_", " "), str(value)))
    return items


@admin_required
def audit(request):
    """Who did what, when: newest first, a page at a time, by action and by who acted."""
    events = AuditEvent.objects.all()
    action = request.GET.get("action", "").strip()[:64]
    actor = request.GET.get("user", "").strip()[:150]
    if action:
        events = events.filter(action__startswith=action) if action.endswith(".") else events.filter(action=action)
    if actor:
        events = events.filter(actor_name=actor)
    page = Paginator(events.order_by("-at", "-id"), AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    for event in page.object_list:
        event.detail_items = _detail_items(event.details)
    actions = AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct()
    query = urlencode({key: value for key, value in (("action", action), ("user", actor)) if value})
    return render(request, "webui/audit.html", {"page": page, "action": action, "actor": actor,
                                                "actions": list(actions), "query": query})
