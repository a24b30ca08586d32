"""Issue 16, organizing the chat: pin, folders, tags, archive (Django's test database, the test client), and the
per-message model switch ("answer with another model") over the chat socket of a real embedded server.

Personas: Alice organizes her conversations; Mallory, another user, must not reach any of them (a 404, never a
403: their existence is not hers to know)."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from webui.models import Conversation, Folder, Message, Tag


@pytest.fixture
def alice(client):
    user = get_user_model().objects.create_user("alice", password="pw-alice-123")
    client.force_login(user)
    return user


@pytest.fixture
def mallory():
    user = get_user_model().objects.create_user("mallory", password="pw-mallory-123")
    client = Client()
    client.force_login(user)
    return client


def chat(owner, title: str, *texts: str) -> Conversation:
    conversation = Conversation.objects.create(owner=owner, title=title)
    parent = None
    for i, text in enumerate(texts or ("hello", "hi there")):
        parent = Message.objects.create(conversation=conversation, parent=parent, content=text,
                                        role="user" if i % 2 == 0 else "assistant")
    conversation.leaf = parent
    conversation.save()
    return conversation


def sidebar(client, query: str = "") -> str:
    """The sidebar's HTML (#conversation-list) as the chat page renders it."""
    html = client.get(f"/{query}").content.decode()
    start = html.index('id="conversation-list"')
    return html[start:html.index("</aside>", start)]


def titles(html: str) -> list[str]:
    return re.findall(r'class="conv-title"[^>]*>([^<]*)</a>', html)


def section(html: str, heading: str) -> str:
    start = html.index(f'<h2 class="sidebar-heading">{heading}</h2>')
    return html[start:html.index("</ul>", start)]


@pytest.mark.django_db
class TestPinning:
    def test_it_pins_a_conversation_into_a_pinned_section_first_and_unpins_it(self, client, alice):
        older = chat(alice, "Older plans")
        chat(alice, "Newer notes")
        assert titles(sidebar(client)) == ["Newer notes", "Older plans"]
        response = client.post(f"/c/{older.pk}/pin/", {"pinned": "1", "next": f"/c/{older.pk}/"})
        assert response.status_code == 302 and response["Location"] == f"/c/{older.pk}/"
        html = sidebar(client)
        assert titles(html) == ["Older plans", "Newer notes"]
        assert "Older plans" in section(html, "Pinned") and "Newer notes" in section(html, "Chats")
        client.post(f"/c/{older.pk}/pin/", {"pinned": "0"})
        assert "Pinned" not in sidebar(client)
        assert not Conversation.objects.get(pk=older.pk).pinned

    def test_the_page_script_gets_json_answers(self, client, alice):
        conversation = chat(alice, "Scripted")
        response = client.post(f"/c/{conversation.pk}/pin/", {"pinned": "1"}, HTTP_ACCEPT="application/json")
        assert response.json() == {"ok": True, "message": "", "pinned": True}


@pytest.mark.django_db
class TestArchive:
    def test_an_archived_conversation_leaves_the_sidebar_for_the_archived_page_and_comes_back(self, client, alice):
        conversation = chat(alice, "Old trip")
        chat(alice, "Current work")
        client.post(f"/c/{conversation.pk}/archive/", {"archived": "1"})
        html = sidebar(client)
        assert titles(html) == ["Current work"]
        assert 'href="/archived/"' in html and "Archived (1)" in html
        archived = client.get("/archived/").content.decode()
        assert f'href="/c/{conversation.pk}/"' in archived and "Old trip" in archived
        assert "Current work" not in archived
        page = client.get(f"/c/{conversation.pk}/").content.decode()  # it still opens, and says so
        assert 'id="archived-note"' in page
        response = client.post(f"/c/{conversation.pk}/archive/", {"archived": "0", "next": "/archived/"})
        assert response["Location"] == "/archived/"
        assert titles(sidebar(client)) == ["Current work", "Old trip"]
        assert "No archived conversations." in client.get("/archived/").content.decode()

    def test_an_archived_conversation_is_deleted_from_the_archived_page(self, client, alice):
        conversation = chat(alice, "To go")
        client.post(f"/c/{conversation.pk}/archive/", {"archived": "1"})
        response = client.post(f"/archived/{conversation.pk}/delete/")
        assert response.status_code == 302 and response["Location"] == "/archived/"
        assert not Conversation.objects.filter(pk=conversation.pk).exists()

    def test_the_search_leaves_archived_conversations_out(self, client, alice):
        conversation = chat(alice, "Hidden kite", "kite strings")
        client.post(f"/c/{conversation.pk}/archive/", {"archived": "1"})
        assert titles(sidebar(client, "?q=kite")) == []


@pytest.mark.django_db
class TestFolders:
    def test_it_creates_renames_and_deletes_a_folder_and_keeps_its_conversations(self, client, alice):
        conversation = chat(alice, "Budget 2027")
        response = client.post("/folders/new/", {"name": "  Work   stuff ", "next": "/"})
        assert response.status_code == 302
        folder = Folder.objects.get(owner=alice)
        assert folder.name == "Work stuff"
        client.post(f"/c/{conversation.pk}/move/", {"folder": str(folder.pk)})
        html = sidebar(client)
        assert f'data-folder="{folder.pk}" data-name="Work stuff"' in html
        assert "Budget 2027" in html[html.index(f'id="folder-{folder.pk}"'):]
        assert titles(section(html, "Chats")) == []
        client.post(f"/folders/{folder.pk}/rename/", {"name": "Finance"})
        assert Folder.objects.get(pk=folder.pk).name == "Finance"
        response = client.post(f"/folders/{folder.pk}/delete/", HTTP_ACCEPT="application/json")
        assert response.json()["message"] == "Deleted the folder “Finance”; its 1 conversation(s) are kept."
        conversation.refresh_from_db()
        assert conversation.folder is None
        assert titles(sidebar(client)) == ["Budget 2027"]

    def test_it_moves_a_conversation_out_of_its_folder(self, client, alice):
        conversation = chat(alice, "Loose again")
        folder = Folder.objects.create(owner=alice, name="Box")
        client.post(f"/c/{conversation.pk}/move/", {"folder": str(folder.pk)})
        assert Conversation.objects.get(pk=conversation.pk).folder_id == folder.pk
        assert client.post(f"/c/{conversation.pk}/move/", {"folder": "not-a-folder"}).status_code == 404
        assert client.post(f"/c/{conversation.pk}/move/", {"folder": str(folder.pk + 99)}).status_code == 404
        assert Conversation.objects.get(pk=conversation.pk).folder_id == folder.pk
        client.post(f"/c/{conversation.pk}/move/", {"folder": ""})
        assert Conversation.objects.get(pk=conversation.pk).folder_id is None

    @pytest.mark.parametrize(("name", "message"), [
        ("", "Give the folder a name."),
        ("   ", "Give the folder a name."),
        ("x" * 81, "A folder name can have at most 80 characters."),
        ("work", "You already have a folder called “work”."),
    ])
    def test_it_refuses_a_bad_folder_name_readably(self, client, alice, name, message):
        Folder.objects.create(owner=alice, name="Work")
        response = client.post("/folders/new/", {"name": name}, HTTP_ACCEPT="application/json")
        assert response.status_code == 400
        assert response.json()["error"]["message"] == message
        page = client.post("/folders/new/", {"name": name}, follow=True).content.decode()
        assert message in page
        assert Folder.objects.filter(owner=alice).count() == 1

    def test_an_empty_folder_shows_how_to_fill_it(self, client, alice):
        chat(alice, "Anything")
        Folder.objects.create(owner=alice, name="Empty one")
        assert "Empty: drag a chat here, or use its ⋯ menu." in sidebar(client)


@pytest.mark.django_db
class TestTags:
    def test_it_tags_and_untags_a_conversation_and_the_sidebar_filters_by_tag(self, client, alice):
        tagged = chat(alice, "Recipe ideas")
        chat(alice, "Tax forms")
        response = client.post(f"/c/{tagged.pk}/tags/add/", {"tag": "cooking"}, HTTP_ACCEPT="application/json")
        assert response.json()["tags"] == ["cooking"]
        client.post(f"/c/{tagged.pk}/tags/add/", {"tag": "Cooking"})  # the same tag, in any case
        client.post(f"/c/{tagged.pk}/tags/add/", {"tag": "home"})
        assert sorted(tagged.tags.values_list("name", flat=True)) == ["cooking", "home"]
        html = sidebar(client)
        assert 'href="?tag=cooking"' in html and '<span class="tag">cooking</span>' in html
        assert titles(sidebar(client, "?tag=cooking")) == ["Recipe ideas"]
        assert "Tagged “cooking”" in sidebar(client, "?tag=COOKING")
        response = client.post(f"/c/{tagged.pk}/tags/remove/", {"tag": "cooking"}, HTTP_ACCEPT="application/json")
        assert response.json()["tags"] == ["home"]
        assert not Tag.objects.filter(owner=alice, name="cooking").exists()  # no conversation has it any more
        assert "No conversation is tagged “cooking”." in sidebar(client, "?tag=cooking")

    def test_the_sidebar_search_matches_tags(self, client, alice):
        tagged = chat(alice, "Untitled", "nothing here")
        chat(alice, "Other")
        client.post(f"/c/{tagged.pk}/tags/add/", {"tag": "astronomy"})
        assert titles(sidebar(client, "?q=astro")) == ["Untitled"]

    @pytest.mark.parametrize(("tag", "message"), [
        ("", "Give the tag a name."),
        ("t" * 41, "A tag name can have at most 40 characters."),
    ])
    def test_it_refuses_a_bad_tag_readably(self, client, alice, tag, message):
        conversation = chat(alice, "Tagged")
        response = client.post(f"/c/{conversation.pk}/tags/add/", {"tag": tag}, HTTP_ACCEPT="application/json")
        assert response.status_code == 400 and response.json()["error"]["message"] == message


@pytest.mark.django_db
class TestOwnership:
    @pytest.mark.parametrize(("path", "data"), [
        ("/c/{c}/pin/", {"pinned": "1"}),
        ("/c/{c}/archive/", {"archived": "1"}),
        ("/c/{c}/move/", {"folder": ""}),
        ("/c/{c}/tags/add/", {"tag": "mine now"}),
        ("/c/{c}/tags/remove/", {"tag": "secret"}),
        ("/archived/{c}/delete/", {}),
        ("/folders/{f}/rename/", {"name": "Taken"}),
        ("/folders/{f}/delete/", {}),
    ])
    def test_another_users_conversation_or_folder_is_a_404_and_stays_as_it_was(self, alice, mallory, path, data):
        conversation = chat(alice, "Private")
        folder = Folder.objects.create(owner=alice, name="Alice's")
        conversation.folder = folder
        conversation.save()
        conversation.tags.add(Tag.objects.create(owner=alice, name="secret"))
        response = mallory.post(path.format(c=conversation.pk, f=folder.pk), data)
        assert response.status_code == 404
        conversation.refresh_from_db()
        assert (conversation.pinned, conversation.archived, conversation.folder_id) == (False, False, folder.pk)
        assert list(conversation.tags.values_list("name", flat=True)) == ["secret"]
        assert Folder.objects.get(pk=folder.pk).name == "Alice's"

    def test_a_conversation_cannot_go_into_another_users_folder(self, client, alice, mallory):
        mine = chat(alice, "Mine")
        theirs = Folder.objects.create(owner=get_user_model().objects.get(username="mallory"), name="Hers")
        assert client.post(f"/c/{mine.pk}/move/", {"folder": str(theirs.pk)}).status_code == 404
        assert Conversation.objects.get(pk=mine.pk).folder_id is None

    def test_another_users_folders_tags_and_archive_are_not_in_the_sidebar(self, client, alice, mallory):
        chat(alice, "Alice's chat")
        mallory_user = get_user_model().objects.get(username="mallory")
        hidden = chat(mallory_user, "Mallory's archived")
        hidden.archived = True
        hidden.save()
        Folder.objects.create(owner=mallory_user, name="Mallory's folder")
        hidden.tags.add(Tag.objects.create(owner=mallory_user, name="mallorytag"))
        html = sidebar(client)
        assert "Mallory" not in html and "mallorytag" not in html and "Archived (" not in html
        assert "Mallory" not in client.get("/archived/").content.decode()

    @pytest.mark.parametrize("path", ["/c/{c}/pin/", "/c/{c}/archive/", "/c/{c}/move/", "/c/{c}/tags/add/",
                                      "/folders/new/", "/folders/{f}/delete/", "/archived/{c}/delete/"])
    def test_writes_are_posts_with_a_csrf_token(self, alice, path):
        conversation = chat(alice, "Guarded")
        folder = Folder.objects.create(owner=alice, name="Guarded")
        strict = Client(enforce_csrf_checks=True)
        strict.force_login(alice)
        url = path.format(c=conversation.pk, f=folder.pk)
        assert strict.get(url).status_code == 405
        assert strict.post(url, {"name": "x", "tag": "x", "pinned": "1", "archived": "1"}).status_code == 403
        conversation.refresh_from_db()
        assert not conversation.pinned and not conversation.archived and Folder.objects.filter(pk=folder.pk).exists()

    def test_the_pages_need_a_login(self, client):
        assert client.get("/archived/").status_code == 302
        assert client.post("/folders/new/", {"name": "x"}).status_code == 302


@pytest.mark.django_db
class TestExportImport:
    def test_an_export_keeps_pin_archive_folder_tags_and_each_replys_model_and_imports_them_back(self, client, alice):
        conversation = chat(alice, "Organized", "question", "answer")
        reply = conversation.leaf
        reply.model_name = "tiny"
        reply.save()
        conversation.pinned = conversation.archived = True
        conversation.folder = Folder.objects.create(owner=alice, name="Projects")
        conversation.save()
        conversation.tags.add(Tag.objects.create(owner=alice, name="ideas"), Tag.objects.create(owner=alice, name="q3"))
        exported = json.loads(client.get(f"/c/{conversation.pk}/export/?format=json").content)["conversations"][0]
        assert (exported["pinned"], exported["archived"], exported["folder"]) == (True, True, "Projects")
        assert sorted(exported["tags"]) == ["ideas", "q3"]
        assert [m["model"] for m in exported["messages"]] == [None, "tiny"]

        bob = get_user_model().objects.create_user("bob", password="pw-bob-123")
        client.force_login(bob)
        body = json.dumps({"format": "hearth.conversations", "version": 1, "conversations": [exported]}).encode()
        client.post("/conversations/import/", {"file": SimpleUploadedFile("hearth.json", body)})
        imported = Conversation.objects.get(owner=bob)
        assert (imported.pinned, imported.archived, imported.folder.name, imported.folder.owner) == (
            True, True, "Projects", bob)
        assert sorted(imported.tags.values_list("name", flat=True)) == ["ideas", "q3"]
        assert all(tag.owner == bob for tag in imported.tags.all())
        assert list(imported.messages.order_by("id").values_list("model_name", flat=True)) == ["", "tiny"]

    def test_an_older_export_without_organizing_still_imports(self, client, alice):
        from pathlib import Path

        data = (Path(__file__).resolve().parent.parent / "data" / "hearth_export.json").read_bytes()
        assert b'"pinned"' not in data
        client.post("/conversations/import/", {"file": SimpleUploadedFile("old.json", data)})
        imported = list(Conversation.objects.filter(owner=alice))
        assert imported
        assert not any(c.pinned or c.archived or c.folder_id or c.tags.exists() for c in imported)

    def test_an_import_into_an_existing_folder_and_tags_reuses_them(self, client, alice):
        Folder.objects.create(owner=alice, name="Projects")
        Tag.objects.create(owner=alice, name="ideas")
        conversation = {"title": "Again", "folder": "projects", "tags": ["IDEAS", "ideas", 7, "new"],
                        "pinned": "yes", "messages": [{"id": 1, "parent": None, "role": "user", "content": "hi"}]}
        body = json.dumps({"format": "hearth.conversations", "version": 1, "conversations": [conversation]}).encode()
        client.post("/conversations/import/", {"file": SimpleUploadedFile("hearth.json", body)})
        imported = Conversation.objects.get(owner=alice, title="Again")
        assert imported.folder.name == "Projects" and Folder.objects.filter(owner=alice).count() == 1
        assert sorted(imported.tags.values_list("name", flat=True)) == ["ideas", "new"]
        assert not imported.pinned  # only true is true


@pytest.mark.django_db
def test_a_reply_shows_the_model_that_wrote_it(client, alice):
    conversation = chat(alice, "Two models", "hi", "hello from tiny")
    Message.objects.filter(pk=conversation.leaf_id).update(model_name="demo")
    html = client.get(f"/c/{conversation.pk}/").content.decode()
    assert re.search(r'<span class="model-name"[^>]*>demo</span>', html)
    assert 'aria-label="Answer with another model"' in html
    older = client.get(f"/c/{conversation.pk}/older/?before={conversation.leaf_id + 1}").json()
    assert [m["model"] for m in older["messages"]] == ["", "demo"]


@pytest.mark.django_db(transaction=True)
def test_the_migration_names_the_model_of_existing_replies_from_their_jobs():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    before = [("webui", "0006_shared_conversation_issue16")]
    after = [("webui", "0007_organizing")]
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    user = old.get_model("auth", "User").objects.create(username="legacy")
    from inference.models import GenerationJob  # the inference tables stay as they are now

    job = GenerationJob.objects.create(owner_id=user.pk, model_name="legacy-model")
    conversation = old.get_model("webui", "Conversation").objects.create(owner=user, title="Old")
    Message = old.get_model("webui", "Message")
    question = Message.objects.create(conversation=conversation, role="user", content="q")
    answer = Message.objects.create(conversation=conversation, role="assistant", content="a", parent=question,
                                    job_id=job.pk)
    executor = MigrationExecutor(connection)
    executor.migrate(after)
    new = executor.loader.project_state(after).apps
    names = dict(new.get_model("webui", "Message").objects.values_list("id", "model_name"))
    assert names == {question.pk: "", answer.pk: "legacy-model"}
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


# ---- the per-message model switch over the chat socket (a real embedded server, tiny real models) ----

def query(server, sql: str, *params):
    with sqlite3.connect(server.data_dir / "hearth.sqlite3", timeout=30) as connection:
        return connection.execute(sql, params).fetchall()


def test_it_answers_one_reply_with_another_model_and_the_conversation_keeps_its_own(embedded_server):
    from tests.integration.chat_client import ChatSocket, login

    socket = ChatSocket(embedded_server, login(embedded_server))
    try:
        socket.send(type="send", conversation=None, model="tiny", content="Name a colour",
                    sampling={"max_tokens": 4})
        first = socket.receive()
        assert first["model"] == "tiny"
        socket.events_until_terminal()
        socket.send(type="regenerate", message=first["message"], answer_with="demo")
        other = socket.receive()
        assert other["type"] == "accepted" and other["model"] == "demo"
        assert other["versions"] == {"index": 2, "count": 2, "prev": first["message"], "next": None}
        assert other["message"] != first["message"]
        assert socket.events_until_terminal()[-1]["event"]["kind"] == "done"
        rows = dict(query(embedded_server, "SELECT id, model_name FROM webui_message WHERE conversation_id = ?",
                          first["conversation"]))
        assert rows[first["message"]] == "tiny" and rows[other["message"]] == "demo"
        chat_model = query(embedded_server, "SELECT m.name FROM webui_conversation c JOIN inference_localmodel m"
                                            " ON m.id = c.model_id WHERE c.id = ?", first["conversation"])
        assert chat_model == [("tiny",)]  # the per-chat model stays the default
        job_model = query(embedded_server, "SELECT model_name FROM inference_generationjob WHERE id = ?",
                          other["job"].replace("-", ""))
        assert job_model == [("demo",)]

        socket.send(type="regenerate", message=first["message"], answer_with="no-such-model")
        refused = socket.receive()
        assert refused == {"type": "error", "code": "model_not_found",
                           "message": "There is no model called “no-such-model” to answer with; pick one from "
                                      "the list."}
        socket.send(type="regenerate", message=first["message"], answer_with=["demo"])
        assert socket.receive()["code"] == "model_not_found"

        embedded_server.create_user("mallory-ws", "pw-mallory-123")
        mallory = ChatSocket(embedded_server, login(embedded_server, "mallory-ws", "pw-mallory-123"))
        mallory.send(type="regenerate", message=first["message"], answer_with="demo")
        assert mallory.receive() == {"type": "error", "code": "not_found", "message": "That message does not exist."}
        mallory.close()
    finally:
        socket.close()
