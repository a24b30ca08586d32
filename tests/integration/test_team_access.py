"""Who may use which model, through every page, the chat socket and every API dialect (the Django test client: no
worker runs here, so a request that may proceed is refused later, 503 no_worker, and never 404 model_not_found).

The people: Ada, an admin; Alice, in the research group; Bob, in the support group; Olga, in no group. The models:
open-chat (everyone), research-chat (the research group), support-chat (the support group).
"""

from __future__ import annotations

import io
import json
import re

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from api.models import ApiKey
from inference import access
from inference.models import AuditEvent, LocalModel
from webui.consumers import ChatConsumer
from webui.models import Conversation, Message

pytestmark = pytest.mark.django_db
User = get_user_model()

MODELS = ("open-chat", "research-chat", "support-chat")
MAY_USE = {
    "ada": {"open-chat", "research-chat", "support-chat"},
    "alice": {"open-chat", "research-chat"},
    "bob": {"open-chat", "support-chat"},
    "olga": {"open-chat"},
}
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def team(tiny_gguf):
    """The people (each with an API key; no password: the test client logs them in) and the models, with access as
    the module's docstring says."""
    research, support = Group.objects.create(name="research"), Group.objects.create(name="support")
    people = {
        "ada": User.objects.create_user("ada", is_staff=True),
        "alice": User.objects.create_user("alice"),
        "bob": User.objects.create_user("bob"),
        "olga": User.objects.create_user("olga"),
    }
    people["alice"].groups.add(research)
    people["bob"].groups.add(support)
    for name in MODELS:
        model = LocalModel.objects.create(name=name, path=str(tiny_gguf), format="gguf", architecture="llama",
                                          context_length=512, size_bytes=tiny_gguf.stat().st_size)
        if name != "open-chat":
            model.open_to_everyone = False
            model.save()
            model.allowed_groups.set([research if name == "research-chat" else support])
    keys = {who: ApiKey.objects.issue(person, name="team test")[1] for who, person in people.items()}
    return {"people": people, "keys": keys, "research": research, "support": support}


def api(client, team, who: str, method: str, path: str, body: dict | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {team['keys'][who]}"}
    if method == "GET":
        return client.get(path, **headers)
    return client.post(path, data=json.dumps(body), content_type="application/json", **headers)


def page_models(html: str, select_id: str) -> set[str]:
    select = re.search(rf'<select id="{select_id}"[^>]*>(.*?)</select>', html, re.S).group(1)
    return set(re.findall(r'<option value="([^"]+)"', select))


# --- lists -------------------------------------------------------------------------------------------------------

LISTS = {
    "/v1/models": lambda response: {m["id"] for m in response.json()["data"]},
    "/api/tags": lambda response: {m["name"] for m in response.json()["models"]},
}


@pytest.mark.parametrize("who", MAY_USE)
@pytest.mark.parametrize("path", LISTS)
def test_it_lists_to_each_key_only_the_models_its_owner_may_use(client, team, who, path):
    response = api(client, team, who, "GET", path)
    assert response.status_code == 200
    assert LISTS[path](response) == MAY_USE[who]


@pytest.mark.parametrize("who", MAY_USE)
def test_it_offers_each_person_only_their_models_on_the_chat_playground_and_library_pages(client, team, who):
    client.force_login(team["people"][who])
    assert page_models(client.get("/").content.decode(), "model-picker") == MAY_USE[who]
    assert page_models(client.get("/playground/").content.decode(), "pg-model") == MAY_USE[who]
    library = client.get("/models/").content.decode()
    assert set(re.findall(r'<tr data-model="([^"]+)"', library)) == MAY_USE[who]


def test_it_knows_who_may_use_what(team):
    for who, names in MAY_USE.items():
        person = team["people"][who]
        assert set(access.models_usable_by(person).values_list("name", flat=True)) == names
        for name in MODELS:
            model = LocalModel.objects.get(name=name)
            assert access.may_use(person, model) == (name in names)
            assert (access.model_for(person, name) is not None) == (name in names)
    team["people"]["alice"].is_active = False
    assert not access.models_usable_by(team["people"]["alice"]).exists()


# --- every endpoint that takes a model's name ----------------------------------------------------------------------

ENDPOINTS = {
    "retrieve": ("GET", "/v1/models/{model}", None),
    "chat": ("POST", "/v1/chat/completions", {"messages": HELLO}),
    "completion": ("POST", "/v1/completions", {"prompt": "Hello"}),
    "embeddings": ("POST", "/v1/embeddings", {"input": "Hello"}),
    "responses": ("POST", "/v1/responses", {"input": "Hello"}),
    "anthropic": ("POST", "/v1/messages", {"max_tokens": 8, "messages": HELLO}),
    "anthropic count_tokens": ("POST", "/v1/messages/count_tokens", {"messages": HELLO}),
    "ollama show": ("POST", "/api/show", {}),
    "ollama chat": ("POST", "/api/chat", {"messages": HELLO, "stream": False}),
    "ollama generate": ("POST", "/api/generate", {"prompt": "Hello", "stream": False}),
    "ollama load (keep_alive)": ("POST", "/api/generate", {}),
    "ollama unload (keep_alive 0)": ("POST", "/api/chat", {"messages": [], "keep_alive": 0}),
    "ollama embed": ("POST", "/api/embed", {"input": "Hello"}),
    "ollama embeddings": ("POST", "/api/embeddings", {"prompt": "Hello"}),
}


def call(client, team, who: str, endpoint: str, model: str):
    method, path, body = ENDPOINTS[endpoint]
    return api(client, team, who, method, path.format(model=model), None if body is None else {"model": model, **body})


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("who", "model"), [("alice", "support-chat"), ("bob", "research-chat"),
                                            ("olga", "research-chat"), ("olga", "support-chat")])
def test_it_answers_a_forbidden_model_exactly_as_a_model_it_does_not_have(client, team, endpoint, who, model):
    unknown = model.replace("-chat", "-gone")  # as long as the forbidden name: the bodies may be compared whole
    forbidden = call(client, team, who, endpoint, model)
    missing = call(client, team, who, endpoint, unknown)
    assert forbidden.status_code == missing.status_code == 404, forbidden.content
    assert forbidden.content.replace(model.encode(), unknown.encode()) == missing.content
    assert forbidden["Content-Type"] == missing["Content-Type"]
    if endpoint.startswith(("ollama", "anthropic")):
        return  # in that dialect's own error shape (api/dialects.py), which has no code
    assert forbidden.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("who", "model"), [("ada", "research-chat"), ("ada", "support-chat"),
                                            ("alice", "research-chat"), ("bob", "support-chat"),
                                            ("olga", "open-chat")])
def test_it_lets_each_person_reach_the_models_they_may_use(client, team, endpoint, who, model):
    response = call(client, team, who, endpoint, model)
    assert response.status_code != 404, response.content
    if response.status_code >= 400:  # no worker runs in this test: queued work is refused with 503
        assert response.status_code == 503, response.content


@pytest.mark.parametrize(("who", "model", "may"), [
    ("ada", "research-chat", True), ("alice", "research-chat", True), ("bob", "research-chat", False),
    ("olga", "research-chat", False), ("olga", "open-chat", True), ("bob", "support-chat", True)])
def test_it_shows_a_model_page_only_to_those_who_may_use_the_model(client, team, who, model, may):
    client.force_login(team["people"][who])
    assert client.get(f"/models/{model}/").status_code == (200 if may else 404)


def test_it_keeps_a_forbidden_model_off_a_conversation_and_out_of_an_import(client, team):
    from webui.exports import import_conversations

    client.force_login(team["people"]["bob"])
    conversation = import_conversations(team["people"]["bob"], [
        {"title": "a", "system_prompt": "", "model": "research-chat", "sampling": {}, "messages": [], "leaf": None},
        {"title": "b", "system_prompt": "", "model": "support-chat", "sampling": {}, "messages": [], "leaf": None},
    ])
    assert [c.model.name if c.model else None for c in conversation] == [None, "support-chat"]
    response = client.post(f"/c/{conversation[1].pk}/settings/", {"model": "research-chat", "system_prompt": ""})
    assert response.status_code == 302
    conversation[1].refresh_from_db()
    assert conversation[1].model.name == "support-chat"


# --- the chat socket ------------------------------------------------------------------------------------------------


@async_to_sync
async def socket_answer(user, message: dict) -> dict:
    """The chat socket's first answer to `message` from `user` (the consumer itself, logged in as them)."""
    communicator = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to(message)
    answer = await communicator.receive_json_from(timeout=10)
    await communicator.disconnect()
    return answer


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["send", "regenerate", "edit", "complete"])
def test_the_chat_socket_answers_a_forbidden_model_as_an_unknown_one(team, kind):
    bob, alice = team["people"]["bob"], team["people"]["alice"]
    message = {"type": kind, "conversation": None, "content": "Hello", "prompt": "Hello"}
    if kind in ("regenerate", "edit"):  # a reply (or the question) of a conversation of theirs
        for person in (bob, alice):
            chat = Conversation.objects.create(owner=person, title="Earlier")
            question = Message.objects.create(conversation=chat, role="user", content="Hi")
            reply = Message.objects.create(conversation=chat, parent=question, role="assistant", content="Hey")
            message[person.username] = (reply if kind == "regenerate" else question).pk
    forbidden = socket_answer(bob, {**message, "message": message.get("bob"), "model": "research-chat"})
    unknown = socket_answer(bob, {**message, "message": message.get("bob"), "model": "research-gone"})
    assert forbidden == unknown and forbidden["code"] == "model_not_found"
    allowed = socket_answer(alice, {**message, "message": message.get("alice"), "model": "research-chat"})
    assert allowed["type"] == "error" and allowed["code"] == "no_worker"  # past the model: no worker runs here


# --- the admin pages ------------------------------------------------------------------------------------------------

ADMIN_PAGES = [("GET", "/users/groups/"), ("POST", "/users/groups/"), ("GET", "/users/groups/{group}/"),
               ("POST", "/users/groups/{group}/"), ("POST", "/models/research-chat/access/"), ("GET", "/audit/"),
               ("GET", "/users/")]


@pytest.mark.parametrize(("method", "path"), ADMIN_PAGES)
@pytest.mark.parametrize("who", ["alice", "bob", "olga"])
def test_members_are_refused_every_admin_page(client, team, who, method, path):
    client.force_login(team["people"][who])
    path = path.format(group=team["research"].pk)
    data = {"action": "delete", "name": "x", "access": "everyone"}
    response = client.get(path) if method == "GET" else client.post(path, data)
    assert response.status_code == 403
    assert Group.objects.filter(name="research").exists()
    assert not LocalModel.objects.get(name="research-chat").open_to_everyone


def test_an_admin_creates_renames_fills_and_deletes_a_group_and_every_step_is_recorded(client, team):
    people = team["people"]
    client.force_login(people["ada"])
    response = client.post("/users/groups/", {"name": "legal"})
    legal = Group.objects.get(name="legal")
    assert response.status_code == 302 and response["Location"] == f"/users/groups/{legal.pk}/"
    assert "already" in client.post("/users/groups/", {"name": "Legal"}, follow=True).content.decode()
    client.post(f"/users/groups/{legal.pk}/", {"action": "add", "user": [people["olga"].pk, people["bob"].pk]})
    assert set(legal.user_set.values_list("username", flat=True)) == {"olga", "bob"}
    client.post(f"/users/groups/{legal.pk}/", {"action": "remove", "user": people["bob"].pk})
    client.post(f"/users/groups/{legal.pk}/", {"action": "rename", "name": "counsel"})
    legal.refresh_from_db()
    assert legal.name == "counsel" and list(legal.user_set.values_list("username", flat=True)) == ["olga"]
    page = client.get(f"/users/groups/{legal.pk}/").content.decode()
    assert 'data-member="olga"' in page and 'data-member="bob"' not in page
    listing = client.get("/users/groups/").content.decode()
    assert 'data-group="counsel"' in listing and 'data-group="research"' in listing
    client.post(f"/users/groups/{legal.pk}/", {"action": "delete"})
    assert not Group.objects.filter(pk=legal.pk).exists() and User.objects.filter(username="olga").exists()
    recorded = list(AuditEvent.objects.order_by("id").values_list("actor_name", "action", "target"))
    assert recorded == [("ada", "group.create", "legal"), ("ada", "group.member_add", "legal"),
                        ("ada", "group.member_add", "legal"), ("ada", "group.member_remove", "legal"),
                        ("ada", "group.rename", "counsel"), ("ada", "group.delete", "counsel")]


def test_an_admin_gives_a_model_to_a_group_and_opens_it_to_everyone_on_its_page(client, team):
    people = team["people"]
    client.force_login(people["ada"])
    page = client.get("/models/research-chat/").content.decode()
    assert 'id="model-access"' in page and f'value="{team["research"].pk}" checked' in page
    client.post("/models/research-chat/access/", {"access": "groups", "groups": [team["support"].pk]})
    assert access.model_for(people["bob"], "research-chat") and not access.model_for(people["alice"], "research-chat")
    client.post("/models/research-chat/access/", {"access": "everyone"})
    assert access.model_for(people["olga"], "research-chat")
    client.post("/models/research-chat/access/", {"access": "groups"})  # no group: admins only
    assert [access.model_for(people[who], "research-chat") is not None for who in MAY_USE] == [
        True, False, False, False]
    events = list(AuditEvent.objects.filter(action="model.access").order_by("id").values_list("details", flat=True))
    assert [(e["open_to_everyone"], e["groups"]) for e in events] == [(False, ["support"]), (True, []), (False, [])]
    client.force_login(people["alice"])
    assert 'id="model-access"' not in client.get("/models/open-chat/").content.decode()


def test_an_admin_puts_people_in_groups_and_manages_accounts_on_the_users_page_with_a_record(client, team):
    people = team["people"]
    client.force_login(people["ada"])
    page = client.get("/users/").content.decode()
    assert page.count(f'name="groups" value="{team["research"].pk}"') == len(people)
    client.post("/users/", {"action": "update", "user": people["olga"].pk, "role": "member", "active": "on",
                            "groups_shown": "1", "groups": [team["research"].pk, team["support"].pk]})
    assert set(people["olga"].groups.values_list("name", flat=True)) == {"research", "support"}
    assert access.model_for(people["olga"], "support-chat") is not None
    client.post("/users/", {"action": "update", "user": people["olga"].pk, "role": "admin", "groups_shown": "1",
                            "groups": [team["support"].pk]})
    client.post("/users/", {"action": "create", "username": "carl", "password": "long-enough-pass-9",
                            "role": "member"})
    client.post("/users/", {"action": "delete", "user": people["bob"].pk, "confirm": "not bob"})
    assert User.objects.filter(username="bob").exists()
    client.post("/users/", {"action": "delete", "user": people["bob"].pk, "confirm": "bob"})
    assert not User.objects.filter(username="bob").exists()
    assert client.post("/users/", {"action": "delete", "user": people["ada"].pk, "confirm": "ada"}).status_code == 302
    assert User.objects.filter(username="ada").exists()  # nobody deletes themselves
    recorded = list(AuditEvent.objects.order_by("id").values_list("action", "target"))
    assert recorded == [("group.member_add", "research"), ("group.member_add", "support"),
                        ("user.role", "olga"), ("user.deactivate", "olga"), ("group.member_remove", "research"),
                        ("user.create", "carl"), ("user.delete", "bob")]


# --- the audit trail -------------------------------------------------------------------------------------------------


def test_keys_made_and_revoked_on_the_keys_page_are_recorded(client, team):
    client.force_login(team["people"]["alice"])
    client.post("/keys/new/", {"name": "laptop"})
    key = ApiKey.objects.get(owner=team["people"]["alice"], name="laptop")
    client.post(f"/keys/{key.pk}/revoke/")
    client.post(f"/keys/{key.pk}/revoke/")  # again: nothing changes, nothing more is recorded
    events = list(AuditEvent.objects.order_by("id").values_list("actor_name", "action", "target"))
    assert events == [("alice", "key.create", key.display), ("alice", "key.revoke", key.display)]


def test_the_audit_page_lists_events_newest_first_a_page_at_a_time_by_action_and_user(client, team,
                                                                                   django_assert_max_num_queries):
    from inference.audit import audit_record

    for n in range(120):
        audit_record(team["people"]["ada" if n % 2 else "alice"], "key.create" if n % 3 else "group.create", f"t{n}")
    client.force_login(team["people"]["ada"])
    with django_assert_max_num_queries(8):
        first = client.get("/audit/").content.decode()
    rows = re.findall(r'<tr data-action="[^"]+">.*?<td>([^<]*)</td>\s*<td><code>([^<]+)</code></td>\s*<td>([^<]*)</td>',
                      first, re.S)
    assert len(rows) == 50 and rows[0] == ("ada", "key.create", "t119") and "Page 1 of 3" in first
    last = client.get("/audit/?page=3").content.decode()
    assert last.count("<tr data-action=") == 20 and ">t0<" in last
    filtered = client.get("/audit/?action=group.create&user=alice").content.decode()
    assert filtered.count("<tr data-action=") == 20  # n divisible by 3 and even: 0, 6, ..., 114
    assert 'data-action="key.create"' not in filtered and ">ada<" not in filtered
    assert "Nothing recorded that matches" in client.get("/audit/?user=nobody").content.decode()


def test_model_uploads_imports_conversions_deletions_and_command_keys_are_recorded(client, team, settings, tmp_path,
                                                                                  tiny_gguf, tiny_hf):
    from django.core.management import call_command

    from inference.conversions import conversion_start
    from inference.services import model_import

    settings.MODELS_DIR = tmp_path / "models"
    settings.MODELS_DIR.mkdir()
    client.force_login(team["people"]["ada"])
    data = tiny_gguf.read_bytes()
    created = client.post("/models/uploads/", {"filename": "t.gguf", "size": len(data), "name": "uploaded"},
                          content_type="application/json").json()
    client.put(f"/models/uploads/{created['id']}/?offset=0", data, content_type="application/octet-stream")
    assert client.post(f"/models/uploads/{created['id']}/finish/").status_code == 200
    hf = model_import(tiny_hf, name="hf-tiny")  # as import_model does
    conversion_start(hf, "gguf", gguf_type="q8_0", dispatch=False, actor=team["people"]["ada"])
    conversion_start(hf, "mlx", dispatch=False, actor=team["people"]["ada"])
    assert client.post("/models/uploaded/delete/").status_code == 302
    call_command("create_api_key", "olga", stdout=io.StringIO())
    recorded = list(AuditEvent.objects.order_by("id").values_list("actor_name", "action", "target"))
    assert recorded[:5] == [("ada", "model.upload", "uploaded"), ("system", "model.import", "hf-tiny"),
                            ("ada", "model.quantize", "hf-tiny"), ("ada", "model.convert", "hf-tiny"),
                            ("ada", "model.delete", "uploaded")]
    assert recorded[5][:2] == ("system", "key.create")
    assert AuditEvent.objects.get(action="model.quantize").details == {
        "to": "gguf", "options": {"type": "q8_0"}, "result": "hf-tiny-q8_0"}


def test_changes_made_in_the_django_admin_are_recorded_too(client, team):
    root = User.objects.create_superuser("root", password="root-pass-123")
    client.force_login(root)
    assert client.post("/admin/auth/group/add/", {"name": "ops"}).status_code == 302
    ops = Group.objects.get(name="ops")
    olga = team["people"]["olga"]
    page = client.get(f"/admin/auth/user/{olga.pk}/change/")
    assert page.status_code == 200
    form = {"username": "olga", "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00",
            "is_active": "on", "groups": [ops.pk]}
    assert client.post(f"/admin/auth/user/{olga.pk}/change/", form).status_code == 302
    assert list(olga.groups.values_list("name", flat=True)) == ["ops"]
    model = LocalModel.objects.get(name="open-chat")
    client.post("/admin/inference/localmodel/", {"action": "delete_selected", "_selected_action": [model.pk],
                                                 "post": "yes"})
    assert not LocalModel.objects.filter(pk=model.pk).exists()
    client.post(f"/admin/auth/group/{ops.pk}/delete/", {"post": "yes"})
    recorded = list(AuditEvent.objects.order_by("id").values_list("actor_name", "action", "target"))
    assert recorded == [("root", "group.create", "ops"), ("root", "user.change", "olga"),
                        ("root", "model.delete", "open-chat"), ("root", "group.delete", "ops")]
    assert all(e.details["via"] == "Django admin" for e in AuditEvent.objects.all())
