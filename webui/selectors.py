from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Exists, OuterRef, Q
from django.http import Http404

from webui.models import Conversation, Folder, Message, Tag

SIDEBAR_LIMIT = 200


def conversations_for(user, search: str = "", tag: str = "", *, archived: bool = False):
    """The user's conversations (the sidebar's: not archived), newest first; `search` matches titles, messages
    and tags, `tag` keeps those with that tag."""
    conversations = Conversation.objects.filter(owner=user, archived=archived)
    search = search.strip()
    if search:
        in_messages = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=search)
        tagged = Tag.objects.filter(conversations=OuterRef("pk"), name__icontains=search)
        conversations = conversations.filter(Q(title__icontains=search) | Exists(in_messages) | Exists(tagged))
    tag = tag.strip()
    if tag:
        conversations = conversations.filter(Exists(Tag.objects.filter(conversations=OuterRef("pk"),
                                                                       name__iexact=tag)))
    return conversations.only("id", "title", "updated_at", "pinned", "archived", "folder_id")


@dataclass
class Sidebar:
    """What the chat page's sidebar shows: pinned ones, each folder with its conversations, the rest; with a
    search or a tag filter, one list of matches."""

    filtered: bool
    search: str = ""
    tag: str = ""
    pinned: list = field(default_factory=list)
    folders: list = field(default_factory=list)  # [(Folder, [Conversation])]
    loose: list = field(default_factory=list)
    matches: list = field(default_factory=list)
    tags: list = field(default_factory=list)
    archived_count: int = 0
    folder_index: list = field(default_factory=list)  # [{"id", "name"}] of every folder, for the ⋯ menus


def sidebar_for(user, search: str = "", tag: str = "") -> Sidebar:
    conversations = list(conversations_for(user, search, tag).prefetch_related("tags")[:SIDEBAR_LIMIT])
    sidebar = Sidebar(filtered=bool(search.strip() or tag.strip()), search=search, tag=tag.strip())
    sidebar.tags = list(Tag.objects.filter(owner=user).values_list("name", flat=True))
    sidebar.tag = next((name for name in sidebar.tags if name.lower() == sidebar.tag.lower()), sidebar.tag)
    sidebar.archived_count = Conversation.objects.filter(owner=user, archived=True).count()
    folders = list(Folder.objects.filter(owner=user))
    sidebar.folder_index = [{"id": folder.pk, "name": folder.name} for folder in folders]
    if sidebar.filtered:
        sidebar.matches = conversations
        return sidebar
    by_folder: dict[int, list] = {}
    for conversation in conversations:
        if conversation.pinned:
            sidebar.pinned.append(conversation)
        elif conversation.folder_id:
            by_folder.setdefault(conversation.folder_id, []).append(conversation)
        else:
            sidebar.loose.append(conversation)
    sidebar.folders = [(folder, by_folder.get(folder.pk, [])) for folder in folders]
    return sidebar


def conversation_for(user, conversation_id: int) -> Conversation:
    """Another user's conversation is a 404, never a 403: its existence is not theirs to know."""
    conversation = Conversation.objects.select_related("model").filter(owner=user, pk=conversation_id).first()
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation


def folder_for(user, folder_id: int) -> Folder:
    folder = Folder.objects.filter(owner=user, pk=folder_id).first()
    if folder is None:
        raise Http404("No such folder.")
    return folder
