"""Server-rendered pages: the chat, the playground, the model library."""

from __future__ import annotations

import json
import re
from functools import wraps

from django.contrib import messages as flash
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Max, Q
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_POST

from config import text as request_text
from config.paths import paths_for
from inference import access, hub, pulls
from inference import selectors as inference_selectors
from inference.audit import audit_record
from inference.conversions import GGUF_TYPES, conversion_start, converter_missing
from inference.engine.base import EngineError
from inference.engine.chat_template import conventional_template
from inference.engine.registry import choose_backend
from inference.leases import queue_positions
from inference.models import FINISHED_STATUSES, JobStatus, ModelPull
from inference.presence import loaded_backends_by_path
from inference.selection import backend_rows, converted_path, model_chain
from inference.services import generation_cancel
from inference.specs import effective_context
from webui import exports, selectors, services, uploads
from webui.models import Upload

RECENT_MESSAGES = 50
SAMPLING_FORM_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "seed")


@login_required
def chat(request, conversation_id: int | None = None):
    conversation = selectors.conversation_for(request.user, conversation_id) if conversation_id else None
    messages, has_more = [], False
    if conversation is not None:
        messages, has_more = services.thread_page(conversation, limit=RECENT_MESSAGES)
    models = list(access.models_usable_by(request.user))  # only the models this user may use (inference/access.py)
    usable = {model.name for model in models}
    selected = (conversation.model.name if conversation and conversation.model and conversation.model.name in usable
                else (models[0].name if models else ""))
    search = request.GET.get("q", "")[:200]
    tag = request.GET.get("tag", "")[:40]
    sampling = {**services.DEFAULT_SAMPLING, **(conversation.sampling if conversation else {})}
    return render(request, "webui/chat.html", {
        "conversation": conversation,
        "sidebar": selectors.sidebar_for(request.user, search, tag),
        "search": search,
        "chat_messages": messages,
        # The exact texts, for copy and edit: HTML parsing changes some characters (\r, NUL) of the bubbles.
        "message_texts": {str(m["id"]): m["text"] for m in messages},
        "share_groups": exports.share_groups(request.user) if conversation else [],
        "has_more": has_more,
        "models": models,
        "selected_model": selected,
        "sampling": sampling,
    })


@login_required
def conversation_older(request, conversation_id: int):
    """The page asks for older messages as the reader scrolls up: JSON, `before` a message id."""
    conversation = selectors.conversation_for(request.user, conversation_id)
    before = request.GET.get("before", "")
    if not before.isdigit():
        return JsonResponse({"error": {"message": "Pass before=<message id>."}}, status=400)
    messages, has_more = services.thread_page(conversation, before=int(before), limit=RECENT_MESSAGES)
    for message in messages:
        if message["stats"].get("error"):
            message["stats"]["error"] = paths_for(message["stats"]["error"], request.user)
    return JsonResponse({"messages": messages, "has_more": has_more})


@require_POST
@login_required
def conversation_rename(request, conversation_id: int):
    conversation = selectors.conversation_for(request.user, conversation_id)
    title = request.POST.get("title", "").strip()[:200]
    if title:
        conversation.title = title
        conversation.save(update_fields=["title", "updated_at"])
    return redirect("webui:conversation", conversation.pk)


@require_POST
@login_required
def conversation_delete(request, conversation_id: int):
    conversation = selectors.conversation_for(request.user, conversation_id)
    conversation.delete()
    flash.success(request, f"Deleted “{conversation.title}”.")
    return redirect("webui:chat")


@require_POST
@login_required
def conversation_settings(request, conversation_id: int):
    conversation = selectors.conversation_for(request.user, conversation_id)
    sampling = {name: request.POST.get(name, "") for name in SAMPLING_FORM_FIELDS}
    model = access.model_for(request.user, request.POST.get("model", "")) if request.POST.get("model") else None
    try:
        services.conversation_settings_save(conversation, system_prompt=request.POST.get("system_prompt", ""),
                                            sampling=sampling, model=model)
    except EngineError as error:
        flash.error(request, error.message)
    else:
        flash.success(request, "Saved the conversation's settings.")
    return redirect("webui:conversation", conversation.pk)


@require_POST
@login_required
def version_show(request, conversation_id: int, message_id: int):
    conversation = selectors.conversation_for(request.user, conversation_id)
    try:
        services.version_select(conversation, message_id)
    except EngineError as error:
        raise Http404(error.message) from None
    return redirect(f"{reverse('webui:conversation', args=[conversation.pk])}#m{message_id}")


@login_required
def playground(request):
    models = list(access.models_usable_by(request.user))
    return render(request, "webui/playground.html", {"models": models})


@login_required
def model_library(request):
    models = access.models_usable_by(request.user).annotate(
        running_jobs=Count("jobs", filter=Q(jobs__status=JobStatus.RUNNING)), last_used=Max("jobs__finished_at"))
    try:
        loaded = loaded_backends_by_path()
    except Exception:  # Redis unreachable: the page still lists the library, load state unknown
        loaded = None
    rows = [{"model": m, "backend": choose_backend(m.format, m.backend), "context": effective_context(m),
             "load_state": _load_state(m, loaded)} for m in models]
    names = {row["model"].name for row in rows}
    # An upload under a name the library already has (imported since, another way) is no longer unfinished.
    unfinished = (Upload.objects.filter(owner=request.user, status=Upload.Status.RECEIVING).exclude(name__in=names)[:20]
                  if request.user.is_staff else [])
    return render(request, "webui/models.html", {
        "rows": rows, "unfinished": unfinished, "max_upload": uploads.max_upload_bytes(),
        "chunk_bytes": min(4 * 1024**2, uploads.MAX_CHUNK_BYTES),
        **(_pulls_context() if request.user.is_staff else {}),
        "curated": [{"entry": entry, "in_library": entry.name in names} for entry in pulls.curated_models()]
        if request.user.is_staff else [],
    })


def _load_state(model, loaded: dict[str, list[str]] | None) -> str:
    """What the workers' heartbeats say: loaded (on which backends), loading (a job runs, nothing loaded yet)."""
    if loaded is None:
        return "unknown"
    backends = loaded.get(model.path, []) + loaded.get(str(converted_path(model)), [])  # or as its GGUF twin
    if backends:
        return f"loaded ({', '.join(backends)})"
    return "loading" if model.running_jobs else "not loaded"


def _model_or_404(request, name: str):
    """The model called `name`, or 404: a model the user may not use is as unknown as one the library lacks."""
    model = access.model_for(request.user, name)
    if model is None:
        raise Http404("No such model.")
    return model


@login_required
def model_detail(request, name: str):
    model = _model_or_404(request, name)
    template_note, template_text = "", model.chat_template
    if not model.chat_template:
        template_text, template_note = conventional_template(model.architecture)
    return render(request, "webui/model_detail.html", {
        "model": model,
        "backend": choose_backend(model.format, model.backend),
        "context": effective_context(model),
        "template_text": template_text,
        "template_note": template_note,
        "metadata_items": sorted((model.metadata or {}).items()),
        "conversions": model.conversions.select_related("result")[:10],
        "gguf_types": GGUF_TYPES,
        "backend_rows": backend_rows(model),
        "chain": model_chain(model),
        "provenance": model.provenance if (model.provenance or {}).get("repo") else None,
        "hub_url": hub.repo_url(model.provenance["repo"]) if (model.provenance or {}).get("repo") else "",
        "update_available": bool((model.provenance or {}).get("latest_commit")) and
        model.provenance.get("latest_commit") != model.provenance.get("commit"),
        # The Access form (admins): everyone, or these groups (webui/views_team.py model_access saves it).
        **({"all_groups": Group.objects.order_by("name"),
            "allowed_group_ids": set(model.allowed_groups.values_list("pk", flat=True))}
           if request.user.is_staff else {}),
    })


@require_POST
@staff_member_required
def model_convert(request, name: str):
    model = _model_or_404(request, name)
    target = request.POST.get("target", "")
    bits = int(request.POST["bits"]) if request.POST.get("bits", "").isdigit() else None
    try:
        conversion_start(model, target, gguf_type=request.POST.get("type", "f16"), bits=bits, actor=request.user)
    except EngineError as error:
        flash.error(request, error.message)
    else:
        waiting = converter_missing()
        if waiting:
            flash.warning(request, f"Conversion of {model.name} to {target} queued. {waiting}")
        else:
            flash.success(request, f"Converting {model.name} to {target}; the result joins the library when done.")
    return redirect("webui:model_detail", name=model.name)


# ---------------------------------------------------------------------------------------------------------
# Model uploads and deletes: admins only. Members get a 403 and see no controls.


def admin_required(view):
    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("Only admins may do this; an admin can give you the role on the users page.")
        return view(request, *args, **kwargs)

    return wrapped


def _error(error: EngineError) -> JsonResponse:
    return JsonResponse({"error": {"message": error.message, "code": error.code}}, status=error.status or 400)


def _upload_json(upload: Upload) -> dict:
    return {"id": str(upload.id), "filename": upload.filename, "name": upload.name, "size": upload.size,
            "received": upload.received, "status": upload.status, "error": upload.error_text,
            "files": upload.files}


def _own_upload(request, upload_id) -> Upload:
    upload = Upload.objects.filter(pk=upload_id).first()
    if upload is None or upload.owner_id != request.user.id:
        raise Http404("No such upload.")
    return upload


@require_POST
@admin_required
def upload_create(request):
    """JSON {filename, size, name} for one file (.gguf or .zip), or {files: [{name, size}, ...], name, folder}
    for a Hugging Face folder sent as separate files."""
    try:
        data = request_text.loads(request.body or b"{}")
        size = int(data.get("size", 0))
    except request_text.InvalidText as error:
        return JsonResponse({"error": {"message": error.message, "param": error.param, "code": "invalid_text"}},
                            status=400)
    except (ValueError, TypeError, AttributeError):
        return JsonResponse({"error": {"message": "Send JSON: {filename, size, name} or {files, name}.",
                                       "code": "bad_request"}}, status=400)
    try:
        if "files" in data:
            upload = uploads.upload_folder_start(owner=request.user, files=data["files"],
                                                 name=str(data.get("name") or ""), folder=str(data.get("folder") or ""))
        else:
            upload = uploads.upload_start(owner=request.user, filename=str(data.get("filename", "")), size=size,
                                          name=str(data.get("name") or ""))
    except EngineError as error:
        return _error(error)
    return JsonResponse(_upload_json(upload), status=201)


@csrf_protect
@admin_required
def upload_detail(request, upload_id):
    """GET: how far it got. PUT ?offset=N (&file=NAME in a folder upload): the next chunk, raw bytes.
    DELETE: give up."""
    upload = _own_upload(request, upload_id)
    if request.method == "GET":
        return JsonResponse(_upload_json(upload))
    if request.method == "DELETE":
        uploads.upload_cancel(upload)
        return JsonResponse({"deleted": True})
    if request.method != "PUT":
        return JsonResponse({"error": {"message": "Use GET, PUT or DELETE.", "code": "method"}}, status=405)
    offset = request.GET.get("offset", "")
    length = int(request.headers.get("Content-Length") or 0)
    if not offset.isdigit():
        return JsonResponse({"error": {"message": "Pass ?offset=<byte>.", "code": "bad_request"}}, status=400)
    if length > uploads.MAX_CHUNK_BYTES:
        return JsonResponse({"error": {"message": f"A chunk can have at most {uploads.MAX_CHUNK_BYTES} bytes.",
                                       "code": "too_large"}}, status=413)
    data = request.read(uploads.MAX_CHUNK_BYTES + 1)
    try:
        upload = uploads.upload_chunk(upload, int(offset), data, file_name=request.GET.get("file"))
    except EngineError as error:
        response = _error(error)
        if error.code == "wrong_offset":
            upload.refresh_from_db()
            response = JsonResponse({**json.loads(response.content), **_upload_json(upload)}, status=409)
        return response
    return JsonResponse(_upload_json(upload))


@require_POST
@admin_required
def upload_finish(request, upload_id):
    upload = _own_upload(request, upload_id)
    try:
        model = uploads.upload_finish(upload)
    except EngineError as error:
        return _error(error)
    return JsonResponse({**_upload_json(upload), "model": model.name,
                         "url": reverse("webui:model_detail", args=[model.name])})


# ---------------------------------------------------------------------------------------------------------
# Pulls from the Hugging Face Hub: admins only. The library page lists them with their progress (a partial the page
# fetches every second while one runs); the jobs page shows them too.


def _pulls_context() -> dict:
    rows = [{"pull": pull, "progress": pulls.pull_progress_text(pull)} for pull in pulls.recent_pulls()]
    return {"pulls": rows, "pulls_active": any(not row["pull"].is_finished for row in rows),
            "pull_waiting": pulls.puller_missing() if any(not row["pull"].is_finished for row in rows) else ""}


@admin_required
def pulls_partial(request):
    return render(request, "webui/_pulls.html", {**_pulls_context(), "pulls_next": reverse("webui:models")})


@require_POST
@admin_required
def pull_create(request):
    """The library page's form (and the suggested models' buttons): repo (or hf.co/owner/name:TAG), a GGUF file or
    a quantization, a revision, a name."""
    data = request.POST
    try:
        repo, tag = hub.parse_reference(data.get("repo", ""))
        file, quant = data.get("file", "").strip(), data.get("quant", "").strip()
        if tag and not (file or quant):
            file, quant = (tag, "") if tag.lower().endswith(".gguf") else ("", tag)
        pull = pulls.pull_start(repo, file=file, quant=quant, revision=data.get("revision", "").strip() or "main",
                                name=data.get("name", "").strip(), owner=request.user)
    except EngineError as error:
        flash.error(request, error.message)
    else:
        waiting = pulls.puller_missing()
        if waiting:
            flash.warning(request, f"Pull of {pull.label} queued. {waiting}")
        else:
            flash.success(request, f"Pulling {pull.label}; the model joins the library when it is fetched and "
                                   "checked.")
    return redirect(reverse("webui:models") + "#pulls")


@admin_required
def pull_files(request):
    """JSON for the pull form: the GGUF files of ?repo= (size, quantization, the default), or the files of its
    safetensors folder; a clear message (4xx) when the hub says no."""
    try:
        repo, _tag = hub.parse_reference(request.GET.get("repo", ""))
        return JsonResponse(pulls.repo_files(repo, request.GET.get("revision", "").strip() or "main"))
    except EngineError as error:
        status = error.status if 400 <= (error.status or 0) < 500 else 502
        return JsonResponse({"error": {"message": error.message, "code": error.code}}, status=status)


@require_POST
@admin_required
def pull_cancel(request, pull_id: int):
    pull = ModelPull.objects.filter(pk=pull_id).first()
    if pull is None:
        raise Http404("No such pull.")
    if pulls.pull_cancel(pull):
        flash.success(request, f"Cancelled the pull of {pull.label}; what it fetched is removed.")
    destination = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(destination, allowed_hosts={request.get_host()}):
        destination = reverse("webui:models")
    return redirect(destination)


@require_POST
@admin_required
def model_check_update(request, name: str):
    model = _model_or_404(request, name)
    try:
        latest, newer = pulls.update_check(model)
    except EngineError as error:
        flash.error(request, error.message)
    else:
        revision = model.provenance.get("revision") or "main"
        if newer:
            flash.success(request, f"{model.provenance['repo']} has a newer commit on {revision}: {latest[:12]} "
                                   f"(this model is {model.provenance.get('commit', '')[:12]}).")
        else:
            flash.success(request, f"Up to date: {revision} is still at {latest[:12]}.")
    return redirect("webui:model_detail", name=name)


@require_POST
@admin_required
def model_pull_update(request, name: str):
    model = _model_or_404(request, name)
    try:
        pull = pulls.update_pull_start(model, owner=request.user)
    except EngineError as error:
        flash.error(request, error.message)
        return redirect("webui:model_detail", name=name)
    flash.success(request, f"Pulling the update of {model.name} as {pull.result_name}; the old one stays until you "
                           "delete it.")
    return redirect(reverse("webui:models") + "#pulls")


@require_POST
@admin_required
def model_delete(request, name: str):
    model = _model_or_404(request, name)
    uploads.model_delete(model, actor=request.user)
    flash.success(request, f"Deleted {name} from the library.")
    return redirect("webui:models")


# ---------------------------------------------------------------------------------------------------------
# Jobs: queued ones with their place in line, running ones live (the page follows them over the chat socket),
# finished ones with timings. Members see their own; admins see everyone's. Owners and admins cancel.


@login_required
def jobs(request):
    mine = inference_selectors.jobs_for(request.user).defer("request", "output_text")
    position = queue_positions()  # the order workers take them in: users in turn, then the oldest
    queued = list(mine.filter(status=JobStatus.QUEUED).order_by("created_at")[:200])
    for job in queued:
        job.position = position.get(str(job.id))
    context = {
        "queued": queued,
        "running": list(mine.filter(status=JobStatus.RUNNING).order_by("started_at")),
        "finished": list(mine.filter(status__in=FINISHED_STATUSES).order_by("-finished_at")[:50]),
        "queue_length": len(position),
        **(_pulls_context() if request.user.is_staff else {}),
    }
    template = "webui/_jobs_tables.html" if request.GET.get("partial") else "webui/jobs.html"
    return render(request, template, context)


@require_POST
@login_required
def job_cancel(request, job_id):
    job = inference_selectors.jobs_for(request.user).filter(pk=job_id).first()
    if job is None:
        raise Http404("No such job.")
    if not job.is_finished:
        generation_cancel(job)
        flash.success(request, "Cancelled the job.")
    return redirect("webui:jobs")


# ---------------------------------------------------------------------------------------------------------
# Users: admins create users, set roles (admin = is_staff, member) and groups, deactivate and delete them; every
# change is recorded in the audit trail (inference/audit.py). Groups have their own page (webui/views_team.py).

ROLES = {"admin": True, "member": False}


@admin_required
def users(request):
    User = get_user_model()
    if request.method == "POST":
        action = request.POST.get("action", "")
        try:
            if action == "create":
                _user_create(User, request.POST, request.user)
                flash.success(request, f"Created {request.POST.get('username', '').strip()}.")
            elif action == "update":
                target = User.objects.filter(pk=request.POST.get("user", "")).first() if request.POST.get(
                    "user", "").isdigit() else None
                if target is None:
                    raise Http404("No such user.")
                _user_update(request.user, target, request.POST)
                if request.POST.get("groups_shown"):  # the row's group boxes (unticked ones are not sent)
                    access.user_groups_set(request.user, target, Group.objects.filter(
                        pk__in=[pk for pk in request.POST.getlist("groups") if pk.isdigit()]))
                flash.success(request, f"Saved {target.username}.")
            elif action == "delete":
                target = User.objects.filter(pk=request.POST.get("user", "")).first() if request.POST.get(
                    "user", "").isdigit() else None
                if target is None:
                    raise Http404("No such user.")
                _user_delete(request.user, target, request.POST)
                flash.success(request, f"Deleted {target.username}.")
            else:
                flash.error(request, "Unknown action.")
        except ValidationError as error:
            flash.error(request, " ".join(error.messages))
        return redirect("webui:users")
    return render(request, "webui/users.html", {"people": User.objects.order_by("username").prefetch_related("groups"),
                                                "groups": Group.objects.order_by("name")})


def _user_create(User, data, actor=None) -> None:
    username = data.get("username", "").strip()
    password = data.get("password", "")
    if not username or not re.fullmatch(r"[\w.@+-]{1,150}", username):
        raise ValidationError("A username is 1-150 letters, digits and @ . + - _.")
    if User.objects.filter(username__iexact=username).exists():
        raise ValidationError(f"{username} already exists.")
    if data.get("role") not in ROLES:
        raise ValidationError("Pick a role: admin or member.")
    candidate = User(username=username, is_staff=ROLES[data["role"]])
    validate_password(password, candidate)
    candidate.set_password(password)
    candidate.save()
    audit_record(actor, "user.create", username, role=data["role"])


def _user_update(actor, target, data) -> None:
    role, active = data.get("role"), data.get("active") == "on"
    if role not in ROLES:
        raise ValidationError("Pick a role: admin or member.")
    if target.pk == actor.pk and (not active or not ROLES[role]):
        raise ValidationError("You cannot deactivate yourself or take away your own admin role.")
    was_staff, was_active = target.is_staff, target.is_active
    target.is_staff, target.is_active = ROLES[role], active
    target.save(update_fields=["is_staff", "is_active"])
    if was_staff != target.is_staff:
        audit_record(actor, "user.role", target.username, role=role, was="admin" if was_staff else "member")
    if was_active != target.is_active:
        audit_record(actor, "user.activate" if active else "user.deactivate", target.username)


def _user_delete(actor, target, data) -> None:
    """Delete an account (its conversations, jobs and keys go with it); the admin types its name to confirm."""
    if target.pk == actor.pk:
        raise ValidationError("You cannot delete yourself.")
    if data.get("confirm", "").strip() != target.username:
        raise ValidationError(f"Type {target.username} to confirm deleting that account.")
    username, was_staff = target.username, target.is_staff
    target.delete()
    audit_record(actor, "user.delete", username, role="admin" if was_staff else "member")
