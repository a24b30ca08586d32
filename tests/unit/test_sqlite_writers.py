"""The embedded mode's SQLite: writers of one process queue on a lock instead of SQLite's sleeping busy handler
(config/sqlite/base.py). Each test uses a database file of its own with SQLite's own wait set to nothing
(PRAGMA busy_timeout=0: a second writer would fail at once with "database is locked"), so a write that succeeds
while another thread holds a transaction can only have waited for it in the process lock, whose wait is bounded
by the connection's `timeout`."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import OperationalError
from django.db.utils import ConnectionHandler

from config.sqlite.base import _write_lock


@pytest.fixture
def database(tmp_path, django_db_blocker):
    """A ConnectionHandler over a fresh file with one table; each thread gets its own connection, as in Django.
    (Not the test database: pytest-django's blocker is lifted for this file only.)"""

    def handler(timeout: float) -> ConnectionHandler:
        return ConnectionHandler({"default": {
            "ENGINE": "config.sqlite", "NAME": str(tmp_path / "db.sqlite3"),
            "OPTIONS": {"timeout": timeout, "transaction_mode": "IMMEDIATE",
                        "init_command": "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=0;"},
        }})

    with django_db_blocker.unblock():
        setup = handler(5)["default"]
        with setup.cursor() as cursor:
            cursor.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        setup.close()
        yield handler


def begin(connection) -> None:
    """What transaction.atomic() does on entering its outermost block."""
    connection.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)


def end(connection) -> None:
    connection.commit()
    connection.set_autocommit(True)


def writing(handler: ConnectionHandler):
    """Alice's connection (this thread's), in a transaction that has written a row and not committed."""
    alice = handler["default"]
    begin(alice)
    with alice.cursor() as cursor:
        cursor.execute("INSERT INTO notes (text) VALUES (%s)", ["alice"])
    return alice


def in_thread(work) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run():
        try:
            outcome.append(work())
        except Exception as error:  # noqa: BLE001 - the test reads it
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_it_makes_a_second_transaction_wait_for_the_first_instead_of_failing(database):
    handler = database(timeout=10)
    alice = writing(handler)

    def bob():
        connection = handler["default"]  # this thread's own connection
        begin(connection)
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO notes (text) VALUES (%s)", ["bob"])
        end(connection)
        connection.close()
        return "committed"

    thread, outcome = in_thread(bob)
    time.sleep(0.3)
    assert thread.is_alive() and not outcome  # Bob waits (SQLite alone would have said "database is locked")
    end(alice)
    thread.join(10)
    assert outcome == ["committed"]
    with alice.cursor() as cursor:
        cursor.execute("SELECT text FROM notes ORDER BY id")
        assert [row[0] for row in cursor.fetchall()] == ["alice", "bob"]
    alice.close()


def test_it_makes_a_write_outside_any_transaction_wait_too(database):
    handler = database(timeout=10)
    alice = writing(handler)

    def bob():
        connection = handler["default"]
        with connection.cursor() as cursor:  # autocommit: one statement, its own implicit transaction
            cursor.execute("UPDATE notes SET text = %s", ["bob was here"])
            count = cursor.rowcount
        connection.close()
        return count

    thread, outcome = in_thread(bob)
    time.sleep(0.3)
    assert thread.is_alive() and not outcome
    end(alice)
    thread.join(10)
    assert outcome == [1]  # it ran after Alice's commit, and saw her row
    alice.close()


def test_it_gives_up_after_the_connection_timeout_as_sqlite_would(database):
    handler = database(timeout=0.2)
    alice = handler["default"]
    begin(alice)

    def bob():
        connection = handler["default"]
        try:
            begin(connection)
        finally:
            connection.close()

    thread, outcome = in_thread(bob)
    thread.join(10)
    assert isinstance(outcome[0], OperationalError) and "database is locked" in str(outcome[0])
    end(alice)
    alice.close()


def test_it_frees_the_lock_when_a_transaction_rolls_back_or_its_connection_closes(database):
    handler = database(timeout=5)
    lock = _write_lock(handler.settings["default"]["NAME"])
    connection = handler["default"]
    begin(connection)
    assert lock.locked()
    connection.rollback()
    connection.set_autocommit(True)
    assert not lock.locked()
    begin(connection)
    connection.close()  # a request's connection closed mid-transaction (its thread ends)
    assert not lock.locked()
    reads = handler["default"]
    with reads.cursor() as cursor:  # reads never take it
        cursor.execute("SELECT count(*) FROM notes")
        assert not lock.locked()
    reads.close()

