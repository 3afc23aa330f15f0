"""The SQL store: sessions in one table of a database, through SQLAlchemy Core.

What each operation of the :class:`~wsgisession.stores.base.Store` interface does
in SQL: which statements it sends, in which transaction, and what their row counts
mean. The table and its statements are :mod:`~wsgisession.stores._sql_table`'s,
the engine :mod:`~wsgisession.stores._sql_engine`'s, and how an operation reaches
the database (retries, locks, SQLite's write queue, errors) is
:mod:`~wsgisession.stores._sql_runner`'s. Time is the middleware's clock,
:func:`wsgisession._clock.now`, never the database server's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple, Self

import sqlalchemy as sa

from .. import _clock
from ..errors import ConfigError, StoreError
from ._sql_direct import Direct
from ._sql_engine import build_engine, check_engine, shown_url
from ._sql_runner import Runner
from ._sql_table import (
    LEASE_KEY,
    build_statements,
    check_table_name,
    record_columns,
    record_params,
    row_record,
    session_table,
)
from .base import CorruptRecord, Record, Store

__all__ = ["SQLStore"]


class _Replaced(NamedTuple):
    """The row a save replaces: its key, the version it must have (if any), and now.

    With a *tombstone*, the row is overwritten by it rather than deleted.
    """

    key: str
    version: int | None
    now: float
    tombstone: Record | None


class _BuildFailed(BaseException):
    """A locked save's build raised: carried past the store's retries and translation.

    Not an :exc:`Exception`, so that nothing on the way catches it; the build's own
    exception is raised in its place once the transaction is rolled back.
    """


class SQLStore(Store):
    """Keep sessions in one table of SQLite, PostgreSQL, MySQL or MariaDB.

    The table (``table_name``, default ``sessions``) is created on first use when it
    is missing. Its columns are ``id_hash`` (the 64-character key, primary key),
    ``data`` and ``meta`` (binary: ``bytea``, ``BLOB``, or ``LONGBLOB`` on MySQL),
    ``version``, ``created_at``, ``expires_at`` (indexed) and ``last_seen`` (double
    precision Unix times from the application's clock, never the server's) and
    ``user_id`` (:data:`~wsgisession.users.MAX_USER_ID` characters, indexed,
    nullable). Each operation is one short transaction; a save is a compare-and-set
    on ``version``. A tombstone is a row of version ``0``.

    A table created before user ids could be 256 characters long has a ``user_id``
    of 255, and the store leaves an existing table as it is: widen it with ``ALTER
    TABLE sessions ALTER COLUMN user_id TYPE VARCHAR(256)`` on PostgreSQL, or
    ``ALTER TABLE sessions MODIFY user_id VARCHAR(256) CHARACTER SET utf8mb4 COLLATE
    utf8mb4_bin NULL`` on MySQL and MariaDB (SQLite does not check the length).

    A :exc:`~wsgisession.StoreError` names the store with its password masked, the
    driver's error and its code, and the first line of the driver's message with
    whatever it quotes left out, since drivers quote values there (a key, a user
    id). The driver's exception, which may hold more, is its ``__cause__``.

    The save lock of :meth:`save_locked` is the row's lock (``SELECT … FOR
    UPDATE``), and on SQLite the database's write lock, taken by this process's
    threads first come, first served: there every write of the process waits its
    turn in one queue before it asks SQLite, so that a busy session never starves a
    writer into SQLite's busy timeout.

    The purge lease of :meth:`claim_purge` is a row in the same table under a key
    that is not hex (``~purge-lease``), so dropping the table removes everything;
    :meth:`count` and :meth:`cleanup` leave it out.

    :param engine: A ready :class:`sqlalchemy.engine.Engine`, used as it is; the
        store does not dispose of it on :meth:`close`. Build it with
        :meth:`from_url` to get SQLite's WAL mode and write locking.
    :param table_name: The table to use, created if missing.
    :param cleanup_batch: How many expired rows :meth:`cleanup` deletes per
        statement, so that a large purge never locks the table for long.
    :raises ConfigError: *engine* is not a synchronous Engine, or the table name or
        batch size is invalid.
    """

    #: The engine every operation goes through.
    engine: sa.Engine
    #: The sessions table.
    table: sa.Table

    def __init__(
        self, engine: sa.Engine, *, table_name: str = "sessions", cleanup_batch: int = 1000
    ) -> None:
        self.engine = check_engine(engine)
        self.table = session_table(check_table_name(table_name), sa.MetaData())
        self.cleanup_batch = _check_cleanup_batch(cleanup_batch)
        self._owns_engine = False
        self._sql = build_statements(self.table, engine.dialect.name)
        self._runner = Runner(engine, self.table)
        self._direct = Direct(engine)
        # Bound once, as the request path calls them in every operation.
        self._run = self._runner.run
        self._transaction = self._runner.transaction
        # The request path's statements, sent past SQLAlchemy's execution layer.
        self._first = self._direct.first
        self._rowcount = self._direct.rowcount

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build the store and its engine from an SQLAlchemy URL, without connecting.

        Connections are not pinged before use (``pool_pre_ping``, off by default,
        would cost a round trip per operation): an operation that finds its pooled
        connection dropped (the database restarted, an idle timeout) gets a fresh one
        and runs once more, so a restart fails no request. SQLite gets WAL mode, a 5
        second busy timeout and ``BEGIN IMMEDIATE`` for writes, so threads and
        processes can share one file. An in-memory SQLite URL is refused: its one
        connection can't be shared. A database file that does not exist yet is
        created readable and writable by its owner only (``0600``), whatever the
        umask, and SQLite gives its ``-wal`` and ``-shm`` files the same mode; an
        existing file keeps its mode, which its owner may have chosen.

        A password holding ``@`` must be percent-encoded (``%40``) in *url*, as
        SQLAlchemy would read the rest of it as the host; such a URL is refused.

        Operations of one statement, which is every operation of the request path,
        run in autocommit on SQLite and on PostgreSQL through psycopg: the engine
        is built in that mode (on PostgreSQL, ``isolation_level="AUTOCOMMIT"``),
        and the store sends ``BEGIN`` itself where it needs a transaction. Keep that
        in mind when using :attr:`engine` for anything else.

        :param url: ``sqlite:///path.db``, ``postgresql+psycopg://…``,
            ``mysql+pymysql://…``, ``mariadb+pymysql://…`` or any SQLAlchemy URL.
        :param options: ``table_name``, ``cleanup_batch``, ``pool_size``,
            ``max_overflow``, ``pool_recycle``, ``pool_pre_ping``, ``pool_timeout``,
            ``connect_args`` and ``echo``.
        :raises ConfigError: The URL or an option is malformed or unknown, or the
            driver is not installed.
        """
        options = dict(options)
        engine = build_engine(url, options)
        try:
            store = cls(engine, **options)
        except BaseException:
            engine.dispose()
            raise
        store._owns_engine = True
        return store

    def __repr__(self) -> str:
        return f"<SQLStore {self.table.name} at {shown_url(self.engine.url)}>"

    # -- the Store interface -------------------------------------------------

    def load(self, key: str) -> Record | None:
        """Return the live record under *key*, or ``None``, in one query.

        :raises CorruptRecord: A column of the row holds a value of the wrong type,
            as only a SQLite row can.
        """
        params = {"key": key, "now": _clock.now()}

        def run(conn: sa.Connection) -> Record | None:
            row = self._first(conn, self._sql.load, params)
            return None if row is None else row_record(row)

        return self._run(run, single=True)

    def user_records(self, user_id: str) -> list[tuple[str, Record]]:
        """Return the user's live records, in one query on the indexed ``user_id``.

        The index is the column itself, so it changes in the same statement as the
        record and needs no pruning of its own. A row that can't be read is left out.
        """
        t = self.table
        query = sa.select(*record_columns(t), t.c.id_hash).where(
            t.c.user_id == user_id, t.c.expires_at > _clock.now(), t.c.id_hash != LEASE_KEY
        )

        def run(conn: sa.Connection) -> list[tuple[str, Record]]:
            rows = conn.execute(query).all()
            # MySQL compares VARCHARs with trailing spaces ignored; "ann " is not "ann".
            return [
                (row.id_hash, record)
                for row in rows
                if row.user_id == user_id and (record := _readable(row)) is not None
            ]

        return self._run(run, single=True)

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
        """Write *record* if the stored version is *expected_version*, in one statement.

        A create (``expected_version=None``) overwrites an expired row. With
        *replaces*, the old row is deleted (or overwritten by *tombstone*) first in
        the same transaction (only if it is live and of *replaces_version*, when that
        is given), and the transaction is rolled back, changing nothing, unless both
        that and the write succeed. A row locked by :meth:`save_locked` makes the
        save wait for the lock, and then fail its version check.
        """
        now = _clock.now()
        old: _Replaced | None = None
        if replaces is not None and replaces != key:
            old = _Replaced(replaces, replaces_version, now, tombstone)
        params = {"key": key, "expected": expected_version, "now": now, **record_params(record)}
        attempts = 0

        def write(conn: sa.Connection) -> bool:
            if expected_version is None:
                return self._create(conn, key, record, now, old)
            with self._transaction(conn, single=old is None) as transaction:
                if not self._delete_replaced(conn, old):
                    return False
                if self._rowcount(conn, self._sql.update_if_version, params) != 1:
                    transaction.rollback()
                    return False
            return True

        def run(conn: sa.Connection) -> bool:
            nonlocal attempts
            attempts += 1
            if write(conn):
                return True
            # A run again after a dropped connection may find the first run's work:
            # its commit landed and only the reply was lost. That is a success, not
            # a conflict (which would end a regenerating session).
            return attempts > 1 and self._live_row_is(conn, key, record)

        single = old is None and (
            expected_version is not None or self._sql.insert_unless_live is not None
        )
        return self._run(run, single=single, writes=True)

    def save_locked(
        self,
        key: str,
        build: Callable[[Record], Record | None],
        *,
        timeout: float,
        moves_to: str | None = None,
        tombstone: Record | None = None,
    ) -> Record | None:
        """Write ``build(current)`` in one transaction that holds the row's lock.

        The transaction locks the live row under *key* with ``SELECT … FOR UPDATE``,
        waiting at most *timeout* seconds behind the transactions that asked first
        (PostgreSQL's ``lock_timeout``; MySQL's ``innodb_lock_wait_timeout``, whole
        seconds, so rounded up), calls *build* and writes its record, then commits.
        A plain save of the row meanwhile waits for the lock, then fails its version
        check. On SQLite the transaction is ``BEGIN IMMEDIATE`` instead, holding the
        database's write lock, which this process's writers take in turn.

        A run again after a dropped connection finds the first run's work if its
        commit landed, and returns that record without building again.

        :raises LockTimeout: The lock did not come within *timeout* seconds.
        """
        deadline = time.monotonic() + timeout
        target = key if moves_to is None else moves_to
        named = f"session {key[:8]}…"
        failures: list[BaseException] = []
        written: Record | None = None

        def run(conn: sa.Connection) -> Record | None:
            nonlocal written
            now = _clock.now()
            params = {"key": key, "now": now}
            left = deadline - time.monotonic()
            transaction, row = self._runner.begin_locked(
                conn, self._sql.load_for_update, params, timeout=left, named=named
            )
            with transaction:
                # A run again after a dropped connection may find the first run's
                # work: its commit landed and only the reply was lost.
                if written is not None and self._live_row_is(conn, target, written):
                    return written
                current = None if row is None else _readable(row)
                if current is None:
                    return None
                try:
                    record = build(current)
                except BaseException as exc:
                    failures.append(exc)
                    raise _BuildFailed from None
                if record is None:
                    return None
                if not self._write_locked(conn, key, target, record, current, now, tombstone):
                    transaction.rollback()
                    return None
                written = record
            return record

        try:
            with self._runner.write_turn(timeout, named):
                return self._run(run)
        except _BuildFailed:
            pass
        except StoreError:
            # Rolling back after the build failed failed as well; the build's
            # exception is the one to see.
            if not failures:
                raise
        raise failures[0]

    def refresh(
        self, key: str, expires_at: float, last_seen: float, *, version: int | None = None
    ) -> bool:
        """Move a live row's expiry and ``last_seen`` forward, never back, in one UPDATE."""
        params = {"key": key, "now": _clock.now(), "expires": expires_at, "seen": last_seen}
        statement = self._sql.refresh
        if version is not None:
            statement = self._sql.refresh_if_version
            params["expected"] = version

        def run(conn: sa.Connection) -> bool:
            with self._transaction(conn, single=True):
                return self._rowcount(conn, statement, params) == 1

        return self._run(run, single=True, writes=True)

    def delete(self, key: str) -> bool:
        """Remove the row under *key*; ``True`` if it was live, and no tombstone."""
        params = {"key": key, "now": _clock.now()}

        def run(conn: sa.Connection) -> bool:
            with self._transaction(conn):
                live = self._rowcount(conn, self._sql.delete_live_session, params)
                if not live:
                    self._rowcount(conn, self._sql.delete_any, params)
            return live == 1

        return self._run(run, writes=True)

    def ping(self) -> None:
        """Connect, create the table if it is missing, and query it once."""
        query = sa.select(self.table.c.version).where(sa.false())

        def run(conn: sa.Connection) -> None:
            conn.execute(query).all()

        self._run(run, single=True)

    def cleanup(self, *, limit: int | None = None) -> int:
        """Delete expired rows, ``cleanup_batch`` per transaction, and return how many.

        Each batch selects the keys of expired rows, then deletes those still
        expired, so a row another request revived in between is kept.
        """
        t = self.table
        now = _clock.now()
        expired = (t.c.expires_at <= now, t.c.id_hash != LEASE_KEY)
        removed = 0
        while limit is None or removed < limit:
            batch = (
                self.cleanup_batch if limit is None else min(self.cleanup_batch, limit - removed)
            )
            query = sa.select(t.c.id_hash).where(*expired).limit(batch)
            keys = self._run(partial(_scalars, query), single=True)
            if not keys:
                break
            delete = sa.delete(t).where(t.c.id_hash.in_(keys), *expired)
            removed += self._run(partial(self._delete_counted, delete), single=True, writes=True)
            if len(keys) < batch:
                break
        return removed

    def count(self) -> int:
        """Return the number of live sessions, tombstones aside."""
        t = self.table
        query = (
            sa.select(sa.func.count())
            .select_from(t)
            .where(t.c.expires_at > _clock.now(), t.c.version > 0, t.c.id_hash != LEASE_KEY)
        )

        def run(conn: sa.Connection) -> int:
            return int(conn.execute(query).scalar_one())

        return self._run(run, single=True)

    def claim_purge(self, interval: float) -> bool:
        """Hold the purge lease for *interval* seconds if no other worker holds it.

        The lease is the row ``~purge-lease``, taken the way a session is created:
        only when no live row is under that key, so exactly one of the workers
        sharing the table gets ``True`` per interval.
        """
        now = _clock.now()
        lease = Record(
            data=b"", version=0, created_at=now, expires_at=now + interval, last_seen=now
        )
        return self._run(
            lambda conn: self._create(conn, LEASE_KEY, lease, now, None),
            single=self._sql.insert_unless_live is not None,
            writes=True,
        )

    def close(self) -> None:
        """Close the pooled connections of an engine this store built."""
        if self._owns_engine:
            self.engine.dispose()

    # -- helpers ---------------------------------------------------------------

    def _create(
        self, conn: sa.Connection, key: str, record: Record, now: float, old: _Replaced | None
    ) -> bool:
        params = {"key": key, "now": now, **record_params(record)}
        if self._sql.insert_unless_live is not None:
            # One statement: insert, or overwrite the row under the key if it expired.
            with self._transaction(conn, single=old is None) as transaction:
                if not self._delete_replaced(conn, old):
                    return False
                if self._rowcount(conn, self._sql.insert_unless_live, params) != 1:
                    transaction.rollback()
                    return False
            return True
        try:
            with self._transaction(conn, single=old is None):
                if not self._delete_replaced(conn, old):
                    return False
                self._rowcount(conn, self._sql.insert, params)
            return True
        except sa.exc.IntegrityError:
            pass  # rolled back, the replaced row with it
        # The failed INSERT's transaction is over, so its shared lock on the row is
        # gone: several losers taking the row's write lock now queue instead of
        # deadlocking on MySQL.
        with self._transaction(conn, single=old is None) as transaction:
            if not self._delete_replaced(conn, old):
                return False
            if self._rowcount(conn, self._sql.overwrite_expired, params) != 1:
                transaction.rollback()
                return False
        return True

    def _live_row_is(self, conn: sa.Connection, key: str, record: Record) -> bool:
        """Whether the live row under *key* is *record*, field for field."""
        row = self._first(conn, self._sql.load, {"key": key, "now": _clock.now()})
        return row is not None and _readable(row) == record

    def _delete_replaced(self, conn: sa.Connection, old: _Replaced | None) -> bool:
        """Delete the row a save replaces, first in its transaction; whether it may go on.

        With a version, only the live row of that version goes, and a missing one
        ends the save (its transaction has changed nothing yet). Deleting first
        takes the old row's lock before the new row is written, so a concurrent
        write to the old row either lands before (and the version no longer
        matches) or waits until this transaction is over. With a tombstone, the row
        is overwritten by it instead, under the same conditions.
        """
        if old is None:
            return True
        if old.version is None:
            self._rowcount(conn, self._sql.delete_any, {"key": old.key})
            if old.tombstone is not None:
                self._rowcount(
                    conn, self._sql.insert, {"key": old.key, **record_params(old.tombstone)}
                )
            return True
        params = {"key": old.key, "expected": old.version, "now": old.now}
        if old.tombstone is None:
            return self._rowcount(conn, self._sql.delete_if_version, params) == 1
        buried = {**params, **record_params(old.tombstone)}
        return self._rowcount(conn, self._sql.update_if_version, buried) == 1

    def _write_locked(
        self,
        conn: sa.Connection,
        key: str,
        target: str,
        record: Record,
        current: Record,
        now: float,
        tombstone: Record | None,
    ) -> bool:
        """Write a locked save's *record* under *target*, in place of *current* under *key*.

        The row under *key* is locked, so the version checks only guard against a
        bug; a fresh *target* is a new row, written over an expired one as a create
        is, and the old one goes or is buried. A live row at *target* is left alone,
        and nothing is written (``False``), as on the other stores.
        """
        if target == key:
            params = {"key": key, "expected": current.version, "now": now, **record_params(record)}
            return self._rowcount(conn, self._sql.update_if_version, params) == 1
        params = {"key": target, "now": now, **record_params(record)}
        if self._sql.insert_unless_live is not None:
            if self._rowcount(conn, self._sql.insert_unless_live, params) != 1:
                return False
        elif self._rowcount(conn, self._sql.overwrite_expired, params) != 1:
            # MySQL: no expired row to overwrite, so a new one, unless a live one is
            # there (the duplicate key rolls back this statement alone).
            try:
                self._rowcount(conn, self._sql.insert, params)
            except sa.exc.IntegrityError:
                return False
        return self._delete_replaced(conn, _Replaced(key, current.version, now, tombstone))

    def _delete_counted(self, statement: sa.Delete, conn: sa.Connection) -> int:
        with self._transaction(conn, single=True):
            return conn.execute(statement).rowcount


def _readable(row: Sequence[Any]) -> Record | None:
    """The record *row* holds, or ``None`` where it can't be read: as if it were missing."""
    try:
        return row_record(row)
    except CorruptRecord:
        return None


def _scalars(query: sa.Select[Any], conn: sa.Connection) -> list[str]:
    return list(conn.scalars(query))


def _check_cleanup_batch(batch: object) -> int:
    """Return *batch* if it is a positive int, else raise :exc:`ConfigError`."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"store option 'cleanup_batch' must be an int >= 1, got {batch!r}")
    return batch
