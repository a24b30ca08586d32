"""Conversations out and in: Hearth JSON (every version of every message), Markdown (the thread on screen), and
imports of Hearth JSON and of a ChatGPT export (`conversations.json`).

Hearth JSON:

    {"format": "hearth.conversations", "version": 1, "exported_at": "...",
     "conversations": [{"title", "system_prompt", "model", "sampling", "created_at", "leaf",
                        "pinned", "archived", "folder": name or null, "tags": [name, ...],
                        "messages": [{"id", "parent", "role", "content", "model", "created_at"}, ...]}]}

`pinned`/`archived`/`folder`/`tags` (the sidebar's organizing) and a reply's `model` (the model that wrote it) are
optional on import: files from before they existed import as unpinned, unarchived, in no folder, untagged.
`id`/`parent` are numbers local to the file (a message's parent comes before it); siblings are the versions
("‹ 2/3 ›"), and `leaf` is the last message of the branch on screen. A ChatGPT export is a list of conversations,
each a tree of nodes (`mapping`) whose `message.author.role` and `message.content.parts` carry the text, and
`current_node` the branch on screen; its system message becomes the system prompt, and tool or empty nodes
are skipped (their children hang from the nearest kept ancestor).
"""

from __future__ import annotations

import json

from django.db import transaction
from django.utils import timezone

from config import text as request_text
from inference.access import models_usable_by
from webui import services
from webui.models import Conversation, Message, SharedConversation

FORMAT = "hearth.conversations"
VERSION = 1
MAX_IMPORT_BYTES = 32 * 1024**2
MAX_CONVERSATIONS = 2000
MAX_MESSAGES = 50_000
ROLES = {"user", "assistant"}


class ImportRefused(ValueError):
    """An import file Hearth will not take; `message` says why, for a person."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# ---- export ----

def conversation_data(conversation: Conversation) -> dict:
    rows = list(Message.objects.filter(conversation=conversation).select_related("job").order_by("id"))
    tree = services.conversation_tree(conversation)
    return {
        "title": conversation.title,
        "system_prompt": conversation.system_prompt,
        "model": conversation.model.name if conversation.model else None,
        "sampling": conversation.sampling,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "leaf": tree.path[-1] if tree.path else None,
        "pinned": conversation.pinned,
        "archived": conversation.archived,
        "folder": conversation.folder.name if conversation.folder_id else None,
        "tags": [t.name for t in conversation.tags.all()],
        "messages": [{
            "id": m.pk, "parent": m.parent_id, "role": m.role, "content": services.message_text(m),
            "model": services.message_model(m) or None, "created_at": m.created_at.isoformat(),
        } for m in rows],
    }


def export_json(conversations) -> str:
    return json.dumps({
        "format": FORMAT, "version": VERSION, "exported_at": timezone.now().isoformat(),
        "conversations": [conversation_data(c) for c in conversations],
    }, ensure_ascii=False, indent=1)


def conversation_markdown(conversation: Conversation) -> str:
    """The thread on screen, each message under its speaker; a message with other versions says which it is."""
    tree = services.conversation_tree(conversation)
    rows = {m.pk: m for m in Message.objects.filter(pk__in=tree.path).select_related("job")}
    lines = [f"# {conversation.title}", ""]
    if conversation.model:
        lines += [f"Model: {conversation.model.name}", ""]
    if conversation.system_prompt:
        lines += ["**System prompt**", "", *(f"> {line}" for line in conversation.system_prompt.splitlines()), ""]
    for message_id in tree.path:
        message = rows[message_id]
        versions = tree.versions(message_id)
        speaker = "You" if message.role == Message.Role.USER else "Assistant"
        note = f" (version {versions['index']} of {versions['count']})" if versions["count"] > 1 else ""
        lines += [f"## {speaker}{note}", "", services.message_text(message).strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def export_markdown(conversations) -> str:
    return "\n---\n\n".join(conversation_markdown(c) for c in conversations)


# ---- import ----

def _text(value, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImportRefused(f"{where} should be text.")
    return value


def _from_hearth(data: dict) -> list[dict]:
    """Hearth JSON -> conversations as {title, system_prompt, model, sampling, messages: [{key, parent, role,
    content}], leaf}."""
    if data.get("version") != VERSION:
        raise ImportRefused(f"This file is Hearth export version {data.get('version')!r}; this Hearth reads "
                            f"version {VERSION}.")
    conversations = data.get("conversations")
    if not isinstance(conversations, list):
        raise ImportRefused("A Hearth export has a list of conversations under “conversations”.")
    out = []
    for n, raw in enumerate(conversations, 1):
        if not isinstance(raw, dict) or not isinstance(raw.get("messages"), list):
            raise ImportRefused(f"Conversation {n} has no list of messages.")
        messages, seen = [], set()
        for i, m in enumerate(raw["messages"], 1):
            where = f"Conversation {n}, message {i}"
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise ImportRefused(f"{where}: each message needs a role of “user” or “assistant”.")
            key, parent = m.get("id"), m.get("parent")
            if key is None or isinstance(key, dict | list) or key in seen:
                raise ImportRefused(f"{where}: each message needs an id of its own.")
            if parent is not None and (isinstance(parent, dict | list) or parent not in seen):
                raise ImportRefused(f"{where}: its parent must be an earlier message of the same conversation.")
            seen.add(key)
            model = m.get("model") if isinstance(m.get("model"), str) and m["role"] == "assistant" else ""
            messages.append({"key": key, "parent": parent, "role": m["role"],
                             "content": _text(m.get("content"), where), "model": model[:128]})
        sampling = raw.get("sampling") if isinstance(raw.get("sampling"), dict) else {}
        try:
            sampling = services.sampling_clean(sampling)
        except services.ChatRefused:
            sampling = {}
        leaf = raw.get("leaf")
        out.append({"title": _text(raw.get("title"), f"Conversation {n}'s title") or "Imported chat",
                    "system_prompt": _text(raw.get("system_prompt"), f"Conversation {n}'s system prompt"),
                    "model": raw.get("model") if isinstance(raw.get("model"), str) else None,
                    "sampling": sampling, "messages": messages,
                    "leaf": leaf if not isinstance(leaf, dict | list) and leaf in seen else None,
                    **_organizing(raw)})
    return out


def _organizing(raw: dict) -> dict:
    """Pinned, archived, folder and tags of an exported conversation; absent or malformed (older files), none."""
    folder = raw.get("folder")
    tags = raw.get("tags") if isinstance(raw.get("tags"), list) else []
    names = []
    for tag in tags:
        name = " ".join(tag.split())[:services.TAG_NAME_CHARS] if isinstance(tag, str) else ""
        if name and name.lower() not in {n.lower() for n in names}:
            names.append(name)
    folder = " ".join(folder.split())[:services.FOLDER_NAME_CHARS] if isinstance(folder, str) else ""
    return {"pinned": raw.get("pinned") is True, "archived": raw.get("archived") is True, "folder": folder or None,
            "tags": names[:services.MAX_TAGS_PER_CONVERSATION]}


def _parts_text(content) -> str:
    if not isinstance(content, dict) or content.get("content_type") not in (None, "text", "multimodal_text"):
        return ""  # code a tool ran, its output, browsing results: not part of the conversation as read
    parts = content.get("parts")
    if isinstance(parts, list):
        return "\n\n".join(p for p in parts if isinstance(p, str) and p).strip()
    return content.get("text") if isinstance(content.get("text"), str) else ""


def _parent(node) -> str | None:
    parent = node.get("parent") if isinstance(node, dict) else None
    return parent if isinstance(parent, str) else None


def _kept_ancestor(mapping: dict, kept: dict, node_id):
    """The nearest message at or above `node_id` that the import keeps (None at the top)."""
    chain, current = [], node_id
    while current is not None and current not in kept and len(chain) <= len(mapping):
        chain.append(current)
        node = mapping.get(current)
        current = _parent(node)
    found = kept.get(current) if current is not None else None
    for link in chain:
        kept.setdefault(link, found)
    return found


def _from_chatgpt(data: list) -> list[dict]:
    out = []
    for n, raw in enumerate(data, 1):
        if not isinstance(raw, dict) or not isinstance(raw.get("mapping"), dict):
            raise ImportRefused(f"Conversation {n} has no “mapping” of messages: is this a ChatGPT "
                                "conversations.json?")
        mapping = raw["mapping"]
        kept: dict[str, str | None] = {}  # node id -> the kept message it hangs from (or itself when kept)
        messages, system_prompt = [], ""

        # Parents before children: walk down from the roots.
        roots = [k for k, node in mapping.items()
                 if isinstance(node, dict) and _parent(node) not in mapping]
        pending = list(reversed(roots))
        visited = set()
        while pending:
            node_id = pending.pop()
            if node_id in visited or not isinstance(mapping.get(node_id), dict):
                continue
            visited.add(node_id)
            node = mapping[node_id]
            message = node.get("message") if isinstance(node.get("message"), dict) else {}
            author = message.get("author") if isinstance(message.get("author"), dict) else {}
            role = author.get("role")
            metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
            if metadata.get("is_visually_hidden_from_conversation") or message.get("recipient", "all") != "all":
                role = None
            text = _parts_text(message.get("content"))
            parent = _parent(node)
            above = _kept_ancestor(mapping, kept, parent) if parent is not None else None
            if role in ROLES and text:
                slug = metadata.get("model_slug") if role == "assistant" else None
                messages.append({"key": node_id, "parent": above, "role": role, "content": text,
                                 "model": slug[:128] if isinstance(slug, str) else ""})
                kept[node_id] = node_id
            else:
                if role == "system" and text and not system_prompt:
                    system_prompt = text
                kept[node_id] = above
            children = node.get("children") if isinstance(node.get("children"), list) else []
            pending.extend(reversed([c for c in children if isinstance(c, str)]))
        current = raw.get("current_node")
        leaf = _kept_ancestor(mapping, kept, current) if isinstance(current, str) and current in mapping else None
        out.append({"title": _text(raw.get("title"), f"Conversation {n}'s title") or "Imported chat",
                    "system_prompt": system_prompt, "model": None, "sampling": {}, "messages": messages,
                    "leaf": leaf})
    return out


def parse_import(raw: bytes, max_bytes: int = MAX_IMPORT_BYTES) -> tuple[str, list[dict]]:
    """The bytes of an uploaded file -> ("Hearth" or "ChatGPT", conversations). Raises ImportRefused."""
    if len(raw) > max_bytes:
        raise ImportRefused(f"The file is {len(raw) / 1024**2:.1f} MB; Hearth imports files of up to "
                            f"{max_bytes / 1024**2:g} MB (export fewer conversations at a time).")
    try:
        data = request_text.loads(raw)
    except request_text.InvalidJson as error:
        raise ImportRefused(f"The file is not JSON ({error.message}). Choose a Hearth export (.json) or "
                            "ChatGPT's conversations.json.") from None
    except request_text.InvalidText as error:
        raise ImportRefused(f"The file has text Hearth cannot store ({error.message})") from None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        kind, conversations = "Hearth", _from_hearth(data)
    elif isinstance(data, list) and all(isinstance(c, dict) and "mapping" in c for c in data):
        kind, conversations = "ChatGPT", _from_chatgpt(data)
    else:
        raise ImportRefused("This JSON is neither a Hearth export nor ChatGPT's conversations.json.")
    if len(conversations) > MAX_CONVERSATIONS:
        raise ImportRefused(f"The file has {len(conversations)} conversations; Hearth imports up to "
                            f"{MAX_CONVERSATIONS} at a time.")
    if sum(len(c["messages"]) for c in conversations) > MAX_MESSAGES:
        raise ImportRefused(f"The file has more than {MAX_MESSAGES} messages; import it in parts.")
    return kind, conversations


@transaction.atomic
def import_conversations(owner, conversations: list[dict]) -> list[Conversation]:
    # Only models the owner may use (inference/access.py): another one's conversation is imported without a model.
    models = {m.name: m for m in models_usable_by(owner).filter(
        name__in={c["model"] for c in conversations if c["model"]})}
    created = []
    for data in conversations:
        conversation = Conversation.objects.create(
            owner=owner, title=data["title"][:200], system_prompt=data["system_prompt"],
            sampling=data["sampling"], model=models.get(data["model"]), pinned=data.get("pinned", False),
            archived=data.get("archived", False),
            folder=services.folder_named(owner, data["folder"]) if data.get("folder") else None)
        for tag in data.get("tags", []):
            services.conversation_tag(conversation, tag)
        ids: dict = {}
        for m in data["messages"]:
            message = Message.objects.create(conversation=conversation, parent_id=ids.get(m["parent"]),
                                             role=m["role"], content=m["content"], model_name=m.get("model", ""))
            ids[m["key"]] = message.pk
        leaf = ids.get(data["leaf"])
        if leaf is None and ids:
            tree = services.conversation_tree(conversation)  # no leaf given: the newest branch
            leaf = tree.path[-1] if tree.path else None
        if leaf is not None:
            conversation.leaf_id = leaf
            conversation.save(update_fields=["leaf"])
        created.append(conversation)
    return created


# ---- sharing ----

def share_groups(user):
    """The groups a user may limit a shared link to: their own (an admin: any)."""
    from django.contrib.auth.models import Group

    return Group.objects.order_by("name") if user.is_staff else user.groups.order_by("name")


def share_create(conversation: Conversation, group=None) -> SharedConversation:
    """A snapshot of the thread on screen now, for every logged-in member or one group's; the conversation may go
    on, the snapshot stays as it is."""
    tree = services.conversation_tree(conversation)
    rows = {m.pk: m for m in Message.objects.filter(pk__in=tree.path).select_related("job")}
    messages = [{"role": rows[i].role, "content": services.message_text(rows[i]),
                 "model": services.message_model(rows[i]) or None} for i in tree.path]
    return SharedConversation.objects.create(
        owner=conversation.owner, conversation=conversation, group=group, title=conversation.title,
        snapshot={"model": conversation.model.name if conversation.model else None,
                  "system_prompt": conversation.system_prompt, "messages": messages})


def share_revoke(share: SharedConversation) -> None:
    if share.revoked_at is None:
        share.revoked_at = timezone.now()
        share.save(update_fields=["revoked_at"])
