"""Export and import of conversations (webui.exports): Hearth JSON with every version, Markdown, and imports of
Hearth JSON and ChatGPT's conversations.json, on Django's test database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile

from webui.models import Conversation, Message
from webui.services import conversation_tree

pytestmark = pytest.mark.django_db
DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture
def alice(client):
    user = get_user_model().objects.create_user("alice", password="pw-alice-123")
    client.force_login(user)
    return user


def branching_conversation(owner) -> Conversation:
    """Q1 -> A1 (2 versions: A1a, A1b) ; A1b -> Q2 ; the thread on screen is Q1, A1b, Q2."""
    conversation = Conversation.objects.create(owner=owner, title="Moon facts", system_prompt="Be exact.",
                                               sampling={"temperature": 0.3})
    q1 = Message.objects.create(conversation=conversation, role="user", content="How far is the Moon?")
    Message.objects.create(conversation=conversation, parent=q1, role="assistant", content="About 384,400 km.")
    a1b = Message.objects.create(conversation=conversation, parent=q1, role="assistant",
                                 content="On average $3.844 \\times 10^5$ km.")
    q2 = Message.objects.create(conversation=conversation, parent=a1b, role="user", content="And the Sun?")
    conversation.leaf = q2
    conversation.save()
    return conversation


def upload(client, name: str, content: bytes):
    return client.post("/conversations/import/", {"file": SimpleUploadedFile(name, content)})


def thread_texts(conversation) -> list[str]:
    tree = conversation_tree(conversation)
    rows = {m.pk: m for m in Message.objects.filter(conversation=conversation)}
    return [rows[i].content for i in tree.path]


def test_a_conversation_exports_as_json_with_every_version_and_imports_back_the_same(client, alice):
    conversation = branching_conversation(alice)
    response = client.get(f"/c/{conversation.pk}/export/?format=json")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="hearth-moon-facts.json"'
    data = json.loads(response.content)
    assert data["format"] == "hearth.conversations" and len(data["conversations"]) == 1
    exported = data["conversations"][0]
    assert exported["system_prompt"] == "Be exact." and exported["sampling"] == {"temperature": 0.3}
    assert [m["content"] for m in exported["messages"]] == [
        "How far is the Moon?", "About 384,400 km.", "On average $3.844 \\times 10^5$ km.", "And the Sun?"]
    assert exported["leaf"] == exported["messages"][3]["id"]

    page = upload(client, "moon.json", response.content)
    assert page.status_code == 302
    copy = Conversation.objects.exclude(pk=conversation.pk).get(owner=alice)
    assert page["Location"] == f"/c/{copy.pk}/"
    assert copy.title == "Moon facts" and copy.system_prompt == "Be exact."
    assert Message.objects.filter(conversation=copy).count() == 4
    assert thread_texts(copy) == thread_texts(conversation)
    q1 = Message.objects.get(conversation=copy, parent=None)
    assert sorted(q1.children.values_list("content", flat=True)) == [
        "About 384,400 km.", "On average $3.844 \\times 10^5$ km."]  # both versions of the reply


def test_markdown_export_has_the_thread_on_screen_and_says_which_version(client, alice):
    conversation = branching_conversation(alice)
    response = client.get(f"/c/{conversation.pk}/export/?format=md")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/markdown")
    text = response.content.decode()
    assert text.startswith("# Moon facts\n")
    assert "> Be exact." in text
    assert "## You\n\nHow far is the Moon?" in text
    assert "## Assistant (version 2 of 2)\n\nOn average $3.844 \\times 10^5$ km." in text
    assert "384,400" not in text  # the other version is in the JSON, not in the thread
    assert text.index("How far") < text.index("On average") < text.index("And the Sun?")


def test_all_of_a_users_conversations_export_and_no_one_elses(client, alice):
    branching_conversation(alice)
    Conversation.objects.create(owner=alice, title="Second")
    bob = get_user_model().objects.create_user("bob", password="pw-bob-123")
    theirs = branching_conversation(bob)
    theirs.title = "Bob's secret"
    theirs.save()
    data = json.loads(client.get("/conversations/export/?format=json").content)
    assert sorted(c["title"] for c in data["conversations"]) == ["Moon facts", "Second"]
    text = client.get("/conversations/export/?format=md").content.decode()
    assert "# Moon facts" in text and "# Second" in text and "Bob" not in text
    assert client.get(f"/c/{theirs.pk}/export/?format=json").status_code == 404
    assert client.get("/conversations/export/?format=pdf").status_code == 400


def test_it_imports_a_chatgpt_export_and_finds_every_message(client, alice):
    page = upload(client, "conversations.json", (DATA / "chatgpt_conversations.json").read_bytes())
    assert page.status_code == 302 and page["Location"] == "/conversations/import/"
    imported = {c.title: c for c in Conversation.objects.filter(owner=alice)}
    assert set(imported) == {"Sourdough starter", "Haiku"}
    sourdough = imported["Sourdough starter"]
    assert sourdough.system_prompt == "You are a patient baker."
    assert sorted(Message.objects.filter(conversation=sourdough).values_list("role", "content")) == sorted([
        ("user", "How do I start a sourdough starter?"),
        ("assistant", "Mix equal weights of flour and water, then feed it daily."),
        ("user", "Which flour is best?"),
        ("assistant", "Whole rye ferments fastest."),
        ("user", "Is this jar big enough?"),
        ("assistant", "Yes: a 1.5 litre jar leaves room to double."),
    ])
    # The edited question is two versions of one message; the tool's output is left out; current_node is on screen.
    assert thread_texts(sourdough) == [
        "How do I start a sourdough starter?", "Mix equal weights of flour and water, then feed it daily.",
        "Is this jar big enough?", "Yes: a 1.5 litre jar leaves room to double."]
    first_reply = Message.objects.get(conversation=sourdough, content__startswith="Mix equal")
    assert first_reply.children.count() == 2
    assert thread_texts(imported["Haiku"]) == [
        "Write a haiku about $x^2$ and \\(\\sqrt{2}\\).",
        "Squares climb the hill,\nroots hide beneath the snowfall,\ntwo halves become whole."]
    listing = client.get("/conversations/import/").content.decode()
    assert "Imported 2 conversations (8 messages) from a ChatGPT export." in listing


def test_it_imports_a_hearth_export_sample_and_finds_every_message(client, alice):
    page = upload(client, "hearth.json", (DATA / "hearth_export.json").read_bytes())
    assert page.status_code == 302
    lisbon = Conversation.objects.get(owner=alice, title="Trip to Lisbon")
    assert lisbon.system_prompt == "Answer briefly." and lisbon.sampling == {"temperature": 0.5}
    assert lisbon.model is None  # the file's model is not in this library
    assert Message.objects.filter(conversation=lisbon).count() == 5
    assert thread_texts(lisbon) == ["Three things to see in Lisbon?", "São Jorge Castle, tram 28, Time Out Market.",
                                    "Which is best at sunset?"]
    assert Conversation.objects.filter(owner=alice, title="Empty one").exists()


@pytest.mark.parametrize(("content", "says"), [
    (b"this is not json", "The file is not JSON"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b'{"hello": "world"}', "neither a Hearth export nor ChatGPT"),
    (b"[1, 2, 3]", "neither a Hearth export nor ChatGPT"),
    (b'[{"title": "x", "mapping": []}]', "is this a ChatGPT conversations.json?"),
    (b'{"format": "hearth.conversations", "version": 9, "conversations": []}', "version 9"),
    (b'{"format": "hearth.conversations", "version": 1, "conversations": [{"messages": '
     b'[{"id": 1, "parent": 7, "role": "user", "content": "hi"}]}]}', "its parent must be an earlier message"),
    (b'{"format": "hearth.conversations", "version": 1, "conversations": [{"messages": '
     b'[{"id": 1, "role": "wizard", "content": "hi"}]}]}', "role of"),
    (b'{"format": "hearth.conversations", "version": 1, "conversations": [{"messages": '
     b'[{"id": 1, "role": "user", "content": "a\\u0000b"}]}]}', "cannot store"),
    (b'[{"title": "x", "mapping": {"a": {"parent": ["x"], "message": {"author": {"role": "user"}, '
     b'"content": {"parts": [{"x": 1}]}}}}, "current_node": {"a": 1}}]', None),
])
def test_bad_input_gets_a_readable_page_and_imports_nothing(client, alice, content, says):
    page = upload(client, "bad.json", content)
    if says is None:  # odd but harmless: imported as an empty conversation, never a 500
        assert page.status_code == 302
        return
    assert page.status_code == 400
    html = page.content.decode()
    assert "Nothing was imported" in html and says in html
    assert not Conversation.objects.filter(owner=alice).exists()


def test_a_file_too_big_or_missing_is_refused_with_a_reason(client, alice, settings):
    settings.HEARTH_MAX_IMPORT_BYTES = 1024**2
    page = upload(client, "big.json", b"[" + b" " * (1024**2 + 10) + b"]")
    assert page.status_code == 400 and "Hearth imports files of up to 1 MB" in page.content.decode()
    page = client.post("/conversations/import/", {})
    assert page.status_code == 400 and "Choose a file to import" in page.content.decode()
    assert not Conversation.objects.filter(owner=alice).exists()


def test_export_and_import_need_a_login(client):
    assert client.get("/conversations/export/").status_code == 302
    assert client.post("/conversations/import/").status_code == 302


def test_a_shared_snapshot_is_readable_by_a_teammate_unchanged_by_later_messages_and_revocable(client, alice):
    conversation = branching_conversation(alice)
    response = client.post(f"/c/{conversation.pk}/share/")
    assert response.status_code == 302 and response["Location"].startswith("/s/")
    link = response["Location"]
    # The owner keeps chatting: the snapshot does not change.
    Message.objects.create(conversation=conversation, parent=conversation.leaf, role="assistant",
                           content="Written after sharing.")
    bob = get_user_model().objects.create_user("bob", password="pw-bob-123")
    client.force_login(bob)
    page = client.get(link)
    html = page.content.decode()
    assert page.status_code == 200
    assert "Moon facts" in html and "How far is the Moon?" in html and "And the Sun?" in html
    assert "On average" in html and "384,400" not in html  # the version on screen when it was shared
    assert "Written after sharing." not in html
    assert 'id="revoke-form"' not in html  # only its owner revokes it
    assert client.post(f"{link}revoke/").status_code == 404
    client.logout()
    assert client.get(link).status_code == 302  # logged-in teammates only
    client.force_login(alice)
    assert client.post(f"/c/{conversation.pk}/share/").status_code == 302  # a second link, kept apart
    listing = client.get("/conversations/import/").content.decode()
    assert listing.count('class="link">Revoke</button>') == 2  # the owner's links, each revocable
    assert client.post(f"{link}revoke/").status_code == 302
    client.force_login(bob)
    gone = client.get(link)
    assert gone.status_code == 404 and "does not open" in gone.content.decode()


def test_nobody_shares_another_users_conversation(client, alice):
    bob = get_user_model().objects.create_user("bob", password="pw-bob-123")
    theirs = branching_conversation(bob)
    assert client.post(f"/c/{theirs.pk}/share/").status_code == 404
    assert client.get(f"/c/{theirs.pk}/share/").status_code == 405


def test_a_snapshot_shared_with_a_group_opens_for_its_members_only(client, alice):
    from django.contrib.auth.models import Group

    research, sales = Group.objects.create(name="research"), Group.objects.create(name="sales")
    alice.groups.add(research)
    carol = get_user_model().objects.create_user("carol", password="pw-carol-123")  # in research
    carol.groups.add(research)
    dave = get_user_model().objects.create_user("dave", password="pw-dave-123")  # in no group
    conversation = branching_conversation(alice)
    assert f'<option value="{research.pk}">the members of research</option>' in client.get(
        f"/c/{conversation.pk}/").content.decode()
    refused = client.post(f"/c/{conversation.pk}/share/", {"group": sales.pk}, follow=True)
    assert "only with a group you belong to" in refused.content.decode()
    assert not conversation.shares.exists()
    link = client.post(f"/c/{conversation.pk}/share/", {"group": research.pk})["Location"]
    assert "for the members of research" in client.get(link).content.decode()
    client.force_login(carol)
    assert client.get(link).status_code == 200
    client.force_login(dave)
    outsider = client.get(link)
    assert outsider.status_code == 404 and "Moon facts" not in outsider.content.decode()
    research.delete()  # the group goes: its links go with it
    client.force_login(carol)
    assert client.get(link).status_code == 404
