"""Server-rendered pages: the chat, the model library."""

from __future__ import annotations

from django.contrib import messages as flash
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from inference import selectors as inference_selectors
from inference.conversions import GGUF_TYPES, conversion_start
from inference.engine.base import EngineError
from inference.engine.chat_template import conventional_template
from inference.engine.registry import choose_backend
from inference.specs import effective_context
from webui import selectors
from webui.services import message_text

RECENT_MESSAGES = 50


@login_required
def chat(request, conversation_id: int | None = None):
    conversation = selectors.conversation_for(request.user, conversation_id) if conversation_id else None
    messages = []
    if conversation is not None:
        recent = list(conversation.messages.select_related("job").order_by("-id")[:RECENT_MESSAGES])[::-1]
        messages = [
            {"id": m.pk, "role": m.role, "text": message_text(m), "job": str(m.job_id) if m.job_id else "",
             "status": m.job.status if m.job else "", "finished": m.job.is_finished if m.job else True}
            for m in recent
        ]
    models = list(inference_selectors.model_list())
    selected = conversation.model.name if conversation and conversation.model else (models[0].name if models else "")
    return render(request, "webui/chat.html", {
        "conversation": conversation,
        "conversations": selectors.conversations_for(request.user)[:100],
        "chat_messages": messages,
        "models": models,
        "selected_model": selected,
    })


@login_required
def model_library(request):
    models = inference_selectors.model_list()
    rows = [{"model": m, "backend": choose_backend(m.format, m.backend), "context": effective_context(m)}
            for m in models]
    return render(request, "webui/models.html", {"rows": rows})


@login_required
def model_detail(request, name: str):
    model = inference_selectors.model_by_name(name)
    if model is None:
        raise Http404("No such model.")
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
    })


@require_POST
@staff_member_required
def model_convert(request, name: str):
    model = inference_selectors.model_by_name(name)
    if model is None:
        raise Http404("No such model.")
    target = request.POST.get("target", "")
    bits = int(request.POST["bits"]) if request.POST.get("bits", "").isdigit() else None
    try:
        conversion_start(model, target, gguf_type=request.POST.get("type", "f16"), bits=bits)
    except EngineError as error:
        flash.error(request, error.message)
    else:
        flash.success(request, f"Converting {model.name} to {target}; the result joins the library when done.")
    return redirect("webui:model_detail", name=model.name)
