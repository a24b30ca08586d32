"""Conversations stored before versions existed become single threads: each message follows the one before."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


@pytest.mark.django_db(transaction=True)
def test_existing_messages_are_linked_into_one_thread_by_the_migration():
    executor = MigrationExecutor(connection)
    before, after = [("webui", "0001_initial")], [("webui", "0002_message_tree")]
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    user = old.get_model("auth", "User").objects.create(username="legacy")
    conversation = old.get_model("webui", "Conversation").objects.create(owner=user, title="Old")
    Message = old.get_model("webui", "Message")
    ids = [Message.objects.create(conversation=conversation, role=role, content=text).pk
           for role, text in [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]]
    executor = MigrationExecutor(connection)
    executor.migrate(after)
    new = executor.loader.project_state(after).apps
    rows = list(new.get_model("webui", "Message").objects.order_by("id").values_list("id", "parent_id"))
    assert rows == [(ids[0], None), (ids[1], ids[0]), (ids[2], ids[1]), (ids[3], ids[2])]
    assert new.get_model("webui", "Conversation").objects.get(pk=conversation.pk).leaf_id == ids[3]
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
