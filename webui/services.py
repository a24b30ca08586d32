"""Writes for the chat: conversations, messages (a tree of versions), and the jobs that answer them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from inference.engine.base import EngineError, GenerationRequest
from inference.engine.sampling import SamplingParams
from inference.models import GenerationJob, LocalModel
from inference.services import generation_start
from webui.models import Conversation, Folder, Message, Tag

TITLE_LENGTH = 60
MAX_SYSTEM_PROMPT_CHARS = 50_000
# name: (type, minimum, maximum). The page's settings panel offers exactly these.
SAMPLING_FIELDS: dict[str, tuple[type, float, float]] = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.0, 1.0),
    "top_k": (int, 0, 1000),
    "min_p": (float, 0.0, 1.0),
    "repeat_penalty": (float, 0.5, 2.0),
    "max_tokens": (int, 1, 1_000_000),
    "seed": (int, 0, 2**31 - 1),
}
DEFAULT_SAMPLING = {"temperature": 0.7}


class ChatRefused(EngineError):
    def __init__(self, message: str, code: str = "bad_request"):
        super().__init__(message, code=code, status=400)


def sampling_clean(raw) -> dict:
    """Validate sampling settings from the page: known names, numbers in range; blank means the default."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ChatRefused("Sampling settings must be an object.")
    clean = {}
    for name, value in raw.items():
        if name not in SAMPLING_FIELDS:
            raise ChatRefused(f"Unknown sampling setting {name!r}.")
        if value is None or value == "":
            continue
        kind, low, high = SAMPLING_FIELDS[name]
        try:
            number = kind(float(value)) if kind is int else kind(value)
        except (TypeError, ValueError):
            raise ChatRefused(f"{name} must be a number.") from None
        if kind is int and float(value) != number:
            raise ChatRefused(f"{name} must be a whole number.")
        if not low <= number <= high:
            raise ChatRefused(f"{name} must be between {low:g} and {high:g}.")
        clean[name] = number
    return clean


def request_options(sampling: dict) -> tuple[SamplingParams, int | None]:
    params = {k: v for k, v in {**DEFAULT_SAMPLING, **sampling}.items() if k != "max_tokens"}
    return SamplingParams(**params), sampling.get("max_tokens")


def conversation_settings_save(conversation: Conversation, *, system_prompt=None, sampling=None,
                               model: LocalModel | None = None) -> None:
    fields = []
    if system_prompt is not None:
        if len(system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
            raise ChatRefused(f"A system prompt can have at most {MAX_SYSTEM_PROMPT_CHARS} characters.")
        conversation.system_prompt = system_prompt
        fields.append("system_prompt")
    if sampling is not None:
        conversation.sampling = sampling_clean(sampling)
        fields.append("sampling")
    if model is not None and conversation.model_id != model.id:
        conversation.model = model
        fields.append("model")
    if fields and conversation.pk:
        conversation.save(update_fields=[*fields, "updated_at"])


# ---------------------------------------------------------------------------------------------------------
# The tree: one query for the (id, parent) pairs of a conversation gives the thread on screen and every
# message's versions, however long the history; a second query fetches the rows of the page shown.


@dataclass
class Tree:
    parent: dict[int, int | None] = field(default_factory=dict)
    children: dict[int | None, list[int]] = field(default_factory=lambda: defaultdict(list))
    path: list[int] = field(default_factory=list)

    def versions(self, message_id: int) -> dict:
        siblings = self.children[self.parent[message_id]]
        at = siblings.index(message_id)
        return {"index": at + 1, "count": len(siblings),
                "prev": siblings[at - 1] if at > 0 else None,
                "next": siblings[at + 1] if at + 1 < len(siblings) else None}

    def branch_end(self, message_id: int) -> int:
        """Follow the newest reply below a message down to the end of its branch."""
        while self.children.get(message_id):
            message_id = self.children[message_id][-1]
        return message_id


def conversation_tree(conversation: Conversation) -> Tree:
    tree = Tree()
    for message_id, parent_id in Message.objects.filter(conversation=conversation).order_by("id").values_list(
        "id", "parent_id"
    ):
        tree.parent[message_id] = parent_id
        tree.children[parent_id].append(message_id)
    leaf = conversation.leaf_id if conversation.leaf_id in tree.parent else None
    if leaf is None and tree.parent:
        leaf = tree.branch_end(tree.children[None][-1]) if tree.children[None] else max(tree.parent)
    path = []
    while leaf is not None:
        path.append(leaf)
        leaf = tree.parent.get(leaf)
    tree.path = path[::-1]
    return tree


def message_text(message: Message) -> str:
    """A reply's text lives on its job until the reply is settled; the job is the source of truth."""
    if message.content or message.job is None:
        return message.content
    return message.job.output_text


def message_model(message: Message) -> str:
    """The name of the model that wrote a reply ("" for the user's messages)."""
    if message.role != Message.Role.ASSISTANT:
        return ""
    return message.model_name or (message.job.model_name if message.job else "")


def message_view(message: Message, tree: Tree) -> dict:
    job = message.job
    stats = {}
    if job is not None and job.is_finished:
        stats = {"completion_tokens": job.completion_tokens, "tokens_per_second": job.tokens_per_second,
                 "time_to_first_token": job.time_to_first_token, "finish_reason": job.finish_reason,
                 "status": job.status, "error": job.error_text}
    return {"id": message.pk, "role": message.role, "text": message_text(message),
            "model": message_model(message), "job": str(message.job_id) if message.job_id else "",
            "finished": job.is_finished if job else True, "stats": stats, "dropped": message.dropped_messages,
            "versions": tree.versions(message.pk)}


def thread_page(conversation: Conversation, *, before: int | None = None, limit: int = 50,
                tree: Tree | None = None) -> tuple[list[dict], bool]:
    """The `limit` messages of the thread on screen that come before message `before` (or the latest)."""
    tree = tree or conversation_tree(conversation)
    end = tree.path.index(before) if before in tree.path else len(tree.path)
    ids = tree.path[max(0, end - limit):end]
    rows = {m.pk: m for m in Message.objects.filter(pk__in=ids).select_related("job")}
    return [message_view(rows[i], tree) for i in ids], end - limit > 0


def history_until(conversation: Conversation, message_id: int, tree: Tree | None = None) -> list[dict]:
    """The prompt's messages: the system prompt, then the thread from the root down to `message_id`."""
    tree = tree or conversation_tree(conversation)
    ids = []
    current = message_id
    while current is not None:
        ids.append(current)
        current = tree.parent.get(current)
    rows = {m.pk: m for m in Message.objects.filter(pk__in=ids).select_related("job")}
    history = [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt else []
    for i in reversed(ids):
        text = message_text(rows[i])
        if text:
            history.append({"role": rows[i].role, "content": text})
    return history


def conversation_messages(conversation: Conversation) -> list[dict[str, str]]:
    tree = conversation_tree(conversation)
    if not tree.path:
        return [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt else []
    return history_until(conversation, tree.path[-1], tree)


def _reply(owner, conversation: Conversation, user_message: Message, model: LocalModel, *,
           chat_model: bool = True) -> tuple[Message, GenerationJob]:
    """Start the reply's job and store the (empty) reply with the model's name. `chat_model`: the model becomes
    the conversation's own (its default for the next turns); False for "answer with another model"."""
    sampling, max_tokens = request_options(conversation.sampling or {})
    # A reply is always bounded: the conversation's own length, else the model's default (an admin sets it);
    # the worker keeps it within what the context leaves.
    request = GenerationRequest(messages=history_until(conversation, user_message.pk), sampling=sampling,
                                max_tokens=max_tokens or model.default_max_tokens, fit_history=True)
    job = generation_start(owner=owner, model=model, request=request)
    reply = Message.objects.create(conversation=conversation, parent=user_message, role=Message.Role.ASSISTANT,
                                   job=job, model_name=model.name)
    changes = {"model": model} if chat_model else {}
    Conversation.objects.filter(pk=conversation.pk).update(leaf=reply, updated_at=timezone.now(), **changes)
    conversation.leaf = reply
    return reply, job


@transaction.atomic
def chat_send(*, owner, conversation: Conversation | None, model: LocalModel, content: str,
              system_prompt: str | None = None, sampling: dict | None = None) -> tuple[
    Conversation, Message, Message, GenerationJob
]:
    """Store the user's message after the thread on screen, start the reply's job, store the (empty) reply."""
    if conversation is None:
        conversation = Conversation(owner=owner, model=model, title=content.strip()[:TITLE_LENGTH] or "New chat")
        conversation_settings_save(conversation, system_prompt=system_prompt, sampling=sampling)
        conversation.save()
        parent = None
    else:
        conversation_settings_save(conversation, system_prompt=system_prompt, sampling=sampling, model=model)
        tree = conversation_tree(conversation)
        parent = tree.path[-1] if tree.path else None
    user_message = Message.objects.create(conversation=conversation, parent_id=parent, role=Message.Role.USER,
                                          content=content)
    reply, job = _reply(owner, conversation, user_message, model)
    return conversation, user_message, reply, job


@transaction.atomic
def chat_regenerate(*, owner, reply: Message, model: LocalModel, chat_model: bool = True) -> tuple[
    Message, GenerationJob
]:
    """Answer the same user message again: the new reply is a sibling of the old one, which is kept.
    `chat_model=False` ("answer with another model"): this reply only; the conversation keeps its model."""
    if reply.role != Message.Role.ASSISTANT or reply.parent_id is None:
        raise ChatRefused("Only a reply can be regenerated.")
    return _reply(owner, reply.conversation, reply.parent, model, chat_model=chat_model)


@transaction.atomic
def chat_edit(*, owner, message: Message, content: str, model: LocalModel) -> tuple[Message, Message, GenerationJob]:
    """Send an edited version of a user message: a sibling of the original, answered afresh; both are kept."""
    if message.role != Message.Role.USER:
        raise ChatRefused("Only your own messages can be edited.")
    edited = Message.objects.create(conversation=message.conversation, parent_id=message.parent_id,
                                    role=Message.Role.USER, content=content)
    reply, job = _reply(owner, message.conversation, edited, model)
    return edited, reply, job


def version_select(conversation: Conversation, message_id: int) -> None:
    """Show another version: the thread now runs through `message_id` down to the newest end of its branch."""
    tree = conversation_tree(conversation)
    if message_id not in tree.parent:
        raise ChatRefused("That message is not in this conversation.", code="not_found")
    Conversation.objects.filter(pk=conversation.pk).update(leaf_id=tree.branch_end(message_id))


def reply_settle(message: Message) -> None:
    """Copy a finished job's text onto its message row."""
    if message.job is not None and message.job.is_finished and not message.content:
        message.content = message.job.output_text
        message.save(update_fields=["content"])


# ---------------------------------------------------------------------------------------------------------
# Organizing: pin, archive, folders, tags. The views fetch the owner's rows (selectors: another user's are a
# 404) and call these.

FOLDER_NAME_CHARS = 80
TAG_NAME_CHARS = 40
MAX_FOLDERS = 200
MAX_TAGS_PER_CONVERSATION = 20


def _name(raw, what: str, limit: int) -> str:
    name = " ".join(str(raw or "").split())
    if not name:
        raise ChatRefused(f"Give the {what} a name.")
    if len(name) > limit:
        raise ChatRefused(f"A {what} name can have at most {limit} characters.")
    return name


def conversation_pin(conversation: Conversation, pinned: bool) -> None:
    Conversation.objects.filter(pk=conversation.pk).update(pinned=pinned)
    conversation.pinned = pinned


def conversation_archive(conversation: Conversation, archived: bool) -> None:
    """Archived conversations leave the sidebar (the Archived page lists them); unarchived, they come back."""
    Conversation.objects.filter(pk=conversation.pk).update(archived=archived)
    conversation.archived = archived


def conversation_move(conversation: Conversation, folder: Folder | None) -> None:
    """Into one of the owner's folders, or out of any (None)."""
    if folder is not None and folder.owner_id != conversation.owner_id:
        raise ChatRefused("That folder does not exist.", code="not_found")
    Conversation.objects.filter(pk=conversation.pk).update(folder=folder)
    conversation.folder = folder


def conversation_delete(conversation: Conversation) -> None:
    conversation.delete()
    Tag.objects.filter(owner_id=conversation.owner_id, conversations__isnull=True).delete()


def folder_create(owner, name) -> Folder:
    name = _name(name, "folder", FOLDER_NAME_CHARS)
    if Folder.objects.filter(owner=owner, name__iexact=name).exists():
        raise ChatRefused(f"You already have a folder called “{name}”.")
    if Folder.objects.filter(owner=owner).count() >= MAX_FOLDERS:
        raise ChatRefused(f"You can have at most {MAX_FOLDERS} folders.")
    return Folder.objects.create(owner=owner, name=name)


def folder_rename(folder: Folder, name) -> None:
    name = _name(name, "folder", FOLDER_NAME_CHARS)
    if Folder.objects.filter(owner_id=folder.owner_id, name__iexact=name).exclude(pk=folder.pk).exists():
        raise ChatRefused(f"You already have a folder called “{name}”.")
    folder.name = name
    folder.save(update_fields=["name"])


@transaction.atomic
def folder_delete(folder: Folder) -> int:
    """Delete the folder; its conversations stay, outside any folder. Returns how many there were."""
    moved = Conversation.objects.filter(folder=folder).update(folder=None)
    folder.delete()
    return moved


def folder_named(owner, name) -> Folder:
    """The owner's folder of that name (any case), made if missing: for imports."""
    name = _name(name, "folder", FOLDER_NAME_CHARS)
    return Folder.objects.filter(owner=owner, name__iexact=name).first() or Folder.objects.create(owner=owner,
                                                                                                  name=name)


@transaction.atomic
def conversation_tag(conversation: Conversation, name) -> Tag:
    """Add a tag (the owner's tag of that name in any case, made if new)."""
    name = _name(name, "tag", TAG_NAME_CHARS)
    tag = Tag.objects.filter(owner_id=conversation.owner_id, name__iexact=name).first()
    if tag is not None and conversation.tags.filter(pk=tag.pk).exists():
        return tag
    if conversation.tags.count() >= MAX_TAGS_PER_CONVERSATION:
        raise ChatRefused(f"A conversation can have at most {MAX_TAGS_PER_CONVERSATION} tags.")
    tag = tag or Tag.objects.create(owner_id=conversation.owner_id, name=name)
    conversation.tags.add(tag)
    return tag


@transaction.atomic
def conversation_untag(conversation: Conversation, name) -> None:
    """Remove a tag; a tag no conversation has any more is gone from the sidebar's list too."""
    name = " ".join(str(name or "").split())
    for tag in conversation.tags.filter(name__iexact=name):
        conversation.tags.remove(tag)
        if not tag.conversations.exists():
            tag.delete()
