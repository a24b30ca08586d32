"""SQLite for the embedded mode, with the writers of one process queued on a lock instead of SQLite's busy handler.

SQLite lets one connection write at a time. A connection that finds the database locked sleeps in SQLite's busy
handler (1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms ... until `timeout`) and tries again, so it learns late
that the lock is free, and a newcomer can take it first. In the embedded mode every writer is a thread of the one
server process (requests, the worker's task threads, the lease keeper), and on a busy 2-core machine eight chat
requests arriving together waited 55-340 ms each at BEGIN IMMEDIATE, most of it asleep while the lock was free.

Here a process-wide lock per database file is taken before SQLite's: by a transaction from its BEGIN to its COMMIT
or ROLLBACK, and by a write statement outside a transaction for that statement. A waiting thread wakes as soon as
the lock is released. SQLite's own lock and busy handler still guard against writers in other processes (a
`manage.py` command run beside the server). The wait for the process lock is bounded by the connection's `timeout`
(as SQLite's is), after which the write fails as SQLite's would: "database is locked".
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from functools import cached_property

from django.db import OperationalError
from django.db.backends.sqlite3 import base

WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
DEFAULT_TIMEOUT_SECONDS = 5.0  # Python's sqlite3 default, for a connection given none

# Not an RLock: a connection shared between threads (Django's live test server) may end a transaction in another
# thread than the one that began it; `holds_write_lock` keeps a connection from taking the lock twice.
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _write_lock(name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(name, threading.Lock())


class CursorWrapper(base.SQLiteCursorWrapper):
    wrapper: DatabaseWrapper

    def _alone(self, query: str) -> contextlib.AbstractContextManager:
        """The process lock for a write outside a transaction (inside one, the transaction holds it)."""
        if self.wrapper.holds_write_lock or self.connection.in_transaction or not _is_write(query):
            return contextlib.nullcontext()
        return self.wrapper.write_lock_taken()

    def execute(self, query, params=None):
        with self._alone(query):
            return super().execute(query, params)

    def executemany(self, query, param_list):
        with self._alone(query):
            return super().executemany(query, param_list)


def _is_write(query: str) -> bool:
    return query.lstrip()[:7].upper().startswith(WRITES)


class DatabaseWrapper(base.DatabaseWrapper):
    holds_write_lock = False

    @cached_property
    def _lock(self) -> threading.Lock:
        return _write_lock(str(self.settings_dict["NAME"]))

    @cached_property
    def _lock_timeout(self) -> float:
        return float(self.settings_dict["OPTIONS"].get("timeout", DEFAULT_TIMEOUT_SECONDS))

    def _acquire(self) -> None:
        if not self._lock.acquire(timeout=self._lock_timeout):
            raise OperationalError("database is locked (another thread of this process kept writing)")
        self.holds_write_lock = True

    def _release(self) -> None:
        if self.holds_write_lock:
            self.holds_write_lock = False
            self._lock.release()

    @contextlib.contextmanager
    def write_lock_taken(self) -> Iterator[None]:
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=CursorWrapper)
        cursor.wrapper = self
        return cursor

    def _start_transaction_under_autocommit(self):
        self._acquire()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release()
            raise

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_unless_in_transaction()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_unless_in_transaction()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release()

    def _release_unless_in_transaction(self):
        """A COMMIT that failed leaves SQLite's transaction open (and its lock held): so does this one, until the
        ROLLBACK that follows."""
        if self.connection is None or not self.connection.in_transaction:
            self._release()
