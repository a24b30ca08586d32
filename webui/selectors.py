from __future__ import annotations

from django.http import Http404

from webui.models import Conversation


def conversations_for(user):
    return Conversation.objects.filter(owner=user)


def conversation_for(user, conversation_id: int) -> Conversation:
    """Another user's conversation is a 404, never a 403: its existence is not theirs to know."""
    conversation = Conversation.objects.filter(owner=user, pk=conversation_id).first()
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation
