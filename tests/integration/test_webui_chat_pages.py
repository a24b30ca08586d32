"""The chat pages on Django's test database: the tree of versions, long histories, the conversation list."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from webui.models import Conversation, Message
from webui.services import conversation_tree, history_until, sampling_clean, thread_page, version_select

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(client):
    user = get_user_model().objects.create_user("alice", password="pw-alice-123")
    client.force_login(user)
    return user


def thread(conversation, texts):
    parent = None
    for i, text in enumerate(texts):
        parent = Message.objects.create(conversation=conversation, parent=parent, content=text,
                                        role="user" if i % 2 == 0 else "assistant")
    conversation.leaf = parent
    conversation.save()
    return parent


def long_conversation(owner, count: int) -> Conversation:
    conversation = Conversation.objects.create(owner=owner, title="Long one")
    Message.objects.bulk_create(
        Message(conversation=conversation, role="user" if i % 2 == 0 else "assistant", content=f"message {i}")
        for i in range(count)
    )
    ids = list(Message.objects.filter(conversation=conversation).order_by("id").values_list("id", flat=True))
    Message.objects.bulk_update(
        [Message(id=i, parent_id=p) for p, i in zip(ids, ids[1:], strict=False)], ["parent"], batch_size=500
    )
    conversation.leaf_id = ids[-1]
    conversation.save()
    return conversation


def test_it_renders_the_latest_50_of_2000_messages_with_a_fixed_number_of_queries(
    client, alice, django_assert_max_num_queries
):
    conversation = long_conversation(alice, 2000)
    with django_assert_max_num_queries(12):
        page = client.get(f"/c/{conversation.pk}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('class="message ') == 50
    assert "message 1999" in html and "message 1950" in html and "message 1949" not in html
    assert 'id="load-older"' in html


def test_the_page_carries_each_text_exactly_for_copy_and_edit(client, alice):
    """HTML parsing turns \r into \n and drops NUL in the bubbles; the JSON copy keeps the reply as streamed."""
    import json
    import re

    conversation = Conversation.objects.create(owner=alice, title="Odd bytes")
    reply = thread(conversation, ["a\r\nb", "x\ry\u0000z </script><b>"])
    html = client.get(f"/c/{conversation.pk}/").content.decode()
    found = re.search(r'<script id="message-texts" type="application/json">(.*?)</script>', html, re.S)
    texts = json.loads(found.group(1))
    assert texts[str(reply.pk)] == "x\ry\u0000z </script><b>"
    assert texts[str(reply.parent_id)] == "a\r\nb"


def test_the_number_of_queries_does_not_grow_with_the_history(client, alice, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = []
    for size in (60, 2000):
        conversation = long_conversation(alice, size)
        with CaptureQueriesContext(connection) as queries:
            assert client.get(f"/c/{conversation.pk}/").status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1]


def test_it_loads_older_messages_before_a_message_as_json(client, alice):
    conversation = long_conversation(alice, 120)
    first_shown = thread_page(conversation)[0][0]["id"]
    older = client.get(f"/c/{conversation.pk}/older/?before={first_shown}").json()
    assert [m["text"] for m in older["messages"]] == [f"message {i}" for i in range(20, 70)]
    assert older["has_more"] is True
    oldest = client.get(f"/c/{conversation.pk}/older/?before={older['messages'][0]['id']}").json()
    assert [m["text"] for m in oldest["messages"]] == [f"message {i}" for i in range(20)]
    assert oldest["has_more"] is False
    assert client.get(f"/c/{conversation.pk}/older/?before=x").status_code == 400


def test_a_regenerated_reply_keeps_every_version_and_the_page_shows_2_of_2(client, alice):
    conversation = Conversation.objects.create(owner=alice, title="Versions")
    first_reply = thread(conversation, ["hi", "hello (first)"])
    second = Message.objects.create(conversation=conversation, parent=first_reply.parent, role="assistant",
                                    content="hello (second)")
    conversation.leaf = second
    conversation.save()
    html = client.get(f"/c/{conversation.pk}/").content.decode()
    assert "hello (second)" in html and "hello (first)" not in html
    assert ">2/2<" in html
    response = client.post(f"/c/{conversation.pk}/show/{first_reply.pk}/")
    assert response.status_code == 302
    html = client.get(f"/c/{conversation.pk}/").content.decode()
    assert "hello (first)" in html and "hello (second)" not in html and ">1/2<" in html


def test_an_edited_message_starts_a_branch_and_the_prompt_follows_the_branch_on_screen(alice):
    conversation = Conversation.objects.create(owner=alice, title="Edits", system_prompt="Be brief.")
    thread(conversation, ["What is 2+2?", "4", "And 3+3?", "6"])
    root = Message.objects.get(conversation=conversation, content="What is 2+2?")
    edited = Message.objects.create(conversation=conversation, parent=None, role="user", content="What is 5+5?")
    answer = Message.objects.create(conversation=conversation, parent=edited, role="assistant", content="10")
    version_select(conversation, edited.pk)
    conversation.refresh_from_db()
    assert conversation.leaf_id == answer.pk
    tree = conversation_tree(conversation)
    assert tree.versions(edited.pk) == {"index": 2, "count": 2, "prev": root.pk, "next": None}
    assert [m["content"] for m in history_until(conversation, answer.pk)] == ["Be brief.", "What is 5+5?", "10"]
    version_select(conversation, root.pk)  # back to the first version: down to the end of its branch
    conversation.refresh_from_db()
    assert [m["content"] for m in history_until(conversation, conversation.leaf_id)] == [
        "Be brief.", "What is 2+2?", "4", "And 3+3?", "6"]


def test_another_users_conversation_is_a_404_everywhere(client, alice):
    bob = get_user_model().objects.create_user("bob", password="pw-bob-123")
    theirs = Conversation.objects.create(owner=bob, title="Bob's secret")
    message = thread(theirs, ["secret"])
    for url in (f"/c/{theirs.pk}/", f"/c/{theirs.pk}/older/?before={message.pk}"):
        assert client.get(url).status_code == 404
    for url in (f"/c/{theirs.pk}/rename/", f"/c/{theirs.pk}/delete/", f"/c/{theirs.pk}/settings/",
                f"/c/{theirs.pk}/show/{message.pk}/"):
        assert client.post(url, {"title": "mine now"}).status_code == 404
    assert Conversation.objects.filter(pk=theirs.pk, title="Bob's secret").exists()
    assert "Bob&#x27;s secret" not in client.get("/").content.decode()


def test_it_searches_renames_and_deletes_conversations(client, alice):
    pasta = Conversation.objects.create(owner=alice, title="Dinner ideas")
    thread(pasta, ["How long do I boil spaghetti?", "About ten minutes."])
    Conversation.objects.create(owner=alice, title="Tax questions")
    html = client.get("/?q=spaghetti").content.decode()
    assert "Dinner ideas" in html and "Tax questions" not in html
    assert "No conversation matches" in client.get("/?q=zebra").content.decode()
    client.post(f"/c/{pasta.pk}/rename/", {"title": "Pasta"})
    assert Conversation.objects.get(pk=pasta.pk).title == "Pasta"
    assert client.post(f"/c/{pasta.pk}/delete/").status_code == 302
    assert not Conversation.objects.filter(pk=pasta.pk).exists()
    assert not Message.objects.filter(conversation_id=pasta.pk).exists()


def test_it_saves_per_conversation_settings_and_refuses_out_of_range_ones_readably(client, alice):
    conversation = Conversation.objects.create(owner=alice, title="Settings")
    client.post(f"/c/{conversation.pk}/settings/", {"system_prompt": "You are a pirate.", "temperature": "0.2",
                                                    "top_p": "0.9", "top_k": "", "max_tokens": "64", "seed": "7"})
    conversation.refresh_from_db()
    assert conversation.system_prompt == "You are a pirate."
    assert conversation.sampling == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 64, "seed": 7}
    page = client.post(f"/c/{conversation.pk}/settings/", {"temperature": "9"}, follow=True)
    assert "temperature must be between 0 and 2" in page.content.decode()
    conversation.refresh_from_db()
    assert conversation.sampling["temperature"] == 0.2


def test_sampling_settings_are_validated():
    assert sampling_clean({"temperature": "0.5", "max_tokens": 10}) == {"temperature": 0.5, "max_tokens": 10}
    for bad in ({"temperature": "hot"}, {"max_tokens": 1.5}, {"top_p": 2}, {"logits": 1}, ["temperature"]):
        with pytest.raises(Exception) as refused:
            sampling_clean(bad)
        assert refused.value.code == "bad_request"


def test_the_playground_page_lists_the_models(client, alice):
    page = client.get("/playground/")
    assert page.status_code == 200
    assert "Completion playground" in page.content.decode()


def test_a_long_conversation_deletes_in_few_queries(client, alice, django_assert_max_num_queries):
    conversation = long_conversation(alice, 2000)
    with django_assert_max_num_queries(32):  # 30, one for its shared links (SharedConversation), one for its tags
        assert client.post(f"/c/{conversation.pk}/delete/").status_code == 302
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()
