from __future__ import annotations

from django.db.models import Exists, OuterRef, Q
from django.http import Http404

from webui.models import Conversation, Message


def conversations_for(user, search: str = ""):
    conversations = Conversation.objects.filter(owner=user)
    search = search.strip()
    if search:
        in_messages = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=search)
        conversations = conversations.filter(Q(title__icontains=search) | Exists(in_messages))
    return conversations.only("id", "title", "updated_at")


def conversation_for(user, conversation_id: int) -> Conversation:
    """Another user's conversation is a 404, never a 403: its existence is not theirs to know."""
    conversation = Conversation.objects.select_related("model").filter(owner=user, pk=conversation_id).first()
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation
