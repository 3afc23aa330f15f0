"""A store on a real backend: the second example of the guide to writing a store.

It keeps records in an SQLite database through the standard library's ``sqlite3``, and
shows what a store of a backend needs beyond the contract: backend errors translated
into ``StoreError``, a connection opened by the first operation rather than by building
the store, ``close()``, and transactions where a compare must hold until the write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Self

from wsgisession.errors import ConfigError
from wsgisession.stores import LockTimeout, Record, Store
from wsgisession.stores.base import translate_errors

# The columns after the key are Record's fields in their order, so that a row is
# Record(*row) and a record's values are dataclasses.astuple(record).
_COLUMNS = "data, version, created_at, expires_at, last_seen, user_id, meta"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    user_id TEXT,
    meta BLOB NOT NULL
);
-- The user index: SQLite keeps it in step with the rows, in the same transaction.
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at);
-- One row: until when the last worker to claim the purge holds it.
CREATE TABLE IF NOT EXISTS purge_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    until REAL NOT NULL
);
"""


class SQLite3Store(Store):
    """Sessions in an SQLite database file, served for ``sqlite3:PATH`` URLs.

    Threads of a process share one connection, one at a time; processes share the
    file, and SQLite's own lock orders their writes.
    """

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        # What names the store in StoreError messages. Store keeps no URL: a store
        # whose URL holds a password keeps it here too, and translate_errors masks it.
        self._name = f"sqlite3:{path}"
        self._db: sqlite3.Connection | None = None  # opened by the first operation
        self._lock = threading.RLock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build the store from ``sqlite3:PATH``; the only option is ``busy_timeout``.

        :raises ConfigError: The URL names no file, or an option is unknown or wrong.
        """
        scheme, _, path = url.partition(":")
        if scheme != "sqlite3" or not path:
            raise ConfigError(f"store {url!r} must name a file, such as 'sqlite3:./sessions.db'")
        for name, value in options.items():
            if name != "busy_timeout":
                raise ConfigError(
                    f"unknown store option {name!r} for sqlite3; known: busy_timeout"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(
                    f"store option 'busy_timeout' must be a number of seconds, got {value!r}"
                )
        return cls(path, **options)

    # -- the connection --------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, this thread's alone until the block ends.

        It is opened here, by the first operation, and again after a failed open, so a
        store built while its file can't be opened works as soon as it can. Every
        ``sqlite3.Error`` raised in the block leaves as ``StoreError``, chained to it.
        """
        with self._lock, translate_errors(self._name, sqlite3.Error):
            if self._db is None:
                self._db = self._open()
            yield self._db

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: the module starts no transactions behind our back; the
        # store begins its own. check_same_thread=False: threads take turns under _lock.
        db = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            db.execute("PRAGMA journal_mode = WAL")  # readers don't wait for a writer
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, inside a transaction that commits if the block returns.

        ``BEGIN IMMEDIATE`` takes the database's write lock at once, so no other
        process writes between a compare and the write that depends on it. A plain
        ``BEGIN`` would take it at the first write, and of two processes that compared
        at once, one would fail instead of waiting.
        """
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite rolls back by itself after some errors
                    db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the connection, if one was opened; safe to call again."""
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                with translate_errors(self._name, sqlite3.Error):
                    db.close()

    # -- records -----------------------------------------------------------------------

    def _live(self, db: sqlite3.Connection, key: str) -> Record | None:
        # Expiry is judged here, by the clock, not left to cleanup(): a record past its
        # expires_at is never returned, even before it is purged.
        row = db.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE key = ? AND expires_at > ?",
            (key, time.time()),
        ).fetchone()
        return None if row is None else Record(*row)

    def _write(
        self,
        db: sqlite3.Connection,
        key: str,
        record: Record,
        replaces: str | None = None,
        tombstone: Record | None = None,
    ) -> None:
        db.execute(
            f"INSERT OR REPLACE INTO sessions (key, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, *dataclasses.astuple(record)),
        )
        if replaces is not None and replaces != key:
            if tombstone is None:
                db.execute("DELETE FROM sessions WHERE key = ?", (replaces,))
            else:
                self._write(db, replaces, tombstone)

    def load(self, key: str) -> Record | None:
        with self._connection() as db:
            return self._live(db, key)

    def save(
        self,
        key: str,
        record: Record,
        *,
        expected_version: int | None,
        replaces: str | None = None,
        replaces_version: int | None = None,
        tombstone: Record | None = None,
    ) -> bool:
        with self._transaction() as db:
            current = self._live(db, key)
            if (None if current is None else current.version) != expected_version:
                return False
            if replaces is not None and replaces != key and replaces_version is not None:
                # A regenerate: the old record must still be the version it merged onto.
                old = self._live(db, replaces)
                if old is None or old.version != replaces_version:
                    return False
            self._write(db, key, record, replaces, tombstone)
            return True

    def save_locked(
        self,
        key: str,
        build: Callable[[Record], Record | None],
        *,
        timeout: float,
        moves_to: str | None = None,
        tombstone: Record | None = None,
    ) -> Record | None:
        # The save lock is the connection's lock, for this process's threads, and the
        # transaction's write lock, for other processes: both held across the read, the
        # build and the write. SQLite has no lock for one session; a server database
        # would lock just its row (SELECT ... FOR UPDATE).
        if not self._lock.acquire(timeout=timeout):
            raise LockTimeout(f"{self._name}: session {key[:8]}… stayed locked {timeout:g} s")
        try:
            with self._transaction() as db:
                current = self._live(db, key)
                if current is None:
                    return None
                record = build(current)  # what it raises rolls back and goes up unchanged
                if record is None:
                    return None
                if moves_to is None:
                    self._write(db, key, record)
                elif self._live(db, moves_to) is not None:
                    return None  # a move is a create: another session lives there
                else:
                    self._write(db, moves_to, record, key, tombstone)
                return record
        finally:
            self._lock.release()

    def refresh(
        self, key: str, expires_at: float, last_seen: float, *, version: int | None = None
    ) -> bool:
        # One statement is atomic by itself: no transaction needed.
        with self._connection() as db:
            cursor = db.execute(
                "UPDATE sessions SET expires_at = max(expires_at, ?),"
                " last_seen = max(last_seen, ?)"
                " WHERE key = ? AND expires_at > ? AND version != 0"  # version 0: a tombstone
                " AND (? IS NULL OR version = ?)",  # saved since, with a version
                (expires_at, last_seen, key, time.time(), version, version),
            )
            return cursor.rowcount == 1

    def delete(self, key: str) -> bool:
        with self._transaction() as db:
            current = self._live(db, key)
            db.execute("DELETE FROM sessions WHERE key = ?", (key,))
            return current is not None and current.version != 0

    # -- housekeeping and the user index ------------------------------------------------

    def ping(self) -> None:
        """Open the database, creating the file and the table if needed."""
        with self._connection() as db:
            db.execute("SELECT 1")

    def cleanup(self, *, limit: int | None = None) -> int:
        with self._connection() as db:
            cursor = db.execute(
                "DELETE FROM sessions WHERE key IN"
                " (SELECT key FROM sessions WHERE expires_at <= ? LIMIT ?)",
                (time.time(), -1 if limit is None else limit),  # LIMIT -1: no limit
            )
            return cursor.rowcount

    def user_records(self, user_id: str) -> list[tuple[str, Record]]:
        # Tombstones have no user, so they are never listed.
        with self._connection() as db:
            rows = db.execute(
                f"SELECT key, {_COLUMNS} FROM sessions WHERE user_id = ? AND expires_at > ?",
                (user_id, time.time()),
            )
            return [(key, Record(*values)) for key, *values in rows]

    def count(self) -> int:
        with self._connection() as db:
            (live,) = db.execute(
                "SELECT count(*) FROM sessions WHERE expires_at > ? AND version != 0",
                (time.time(),),
            ).fetchone()
            return int(live)

    def claim_purge(self, interval: float) -> bool:
        # Processes share the file, so the right to purge is a lease in it.
        with self._transaction() as db:
            now = time.time()
            held = db.execute("SELECT until FROM purge_lease WHERE until > ?", (now,)).fetchone()
            if held is not None:
                return False
            db.execute(
                "INSERT OR REPLACE INTO purge_lease (id, until) VALUES (1, ?)", (now + interval,)
            )
            return True
