"""How the SQL store's operations reach the database, one connection each.

An operation is a function of one connection that sends the store's statements.
Running it takes more than a connection from the pool: the table is created on
first use; a pooled connection the server dropped is replaced and the operation
run once more, and a deadlock or serialization failure is retried; a transaction
is opened the way the engine needs (an engine in autocommit gets its ``BEGIN``
from the store); a row lock is waited for no longer than asked, which each
database bounds its own way; SQLite's writers of this process take their turns
first come, first served; and the driver's errors become
:exc:`~wsgisession.errors.StoreError` with the session data, keys and user ids
kept out of their messages.
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import sqlalchemy as sa

from ..errors import StoreError
from ._sql_engine import begin_statement, built_by_store, busy_timeout, shown_url
from ._turns import Turns
from .base import LockTimeout

__all__ = ["Runner"]

_T = TypeVar("_T")

_ATTEMPTS: Final = 8

# A deadlock or serialization failure rolls the whole transaction back, so running
# the operation again is safe; these are the codes that mean exactly that.
_RETRY_SQLSTATES: Final = frozenset({"40001", "40P01"})
_RETRY_MYSQL_ERRNOS: Final = frozenset({1020, 1213})

# What a lock wait that ran out raises: PostgreSQL's lock_not_available, MySQL's
# ER_LOCK_WAIT_TIMEOUT and SQLite's SQLITE_BUSY.
_LOCK_SQLSTATES: Final = frozenset({"55P03"})
_LOCK_MYSQL_ERRNOS: Final = frozenset({1205})
_SQLITE_BUSY: Final = 5

# MySQL bounds a row lock wait by a session variable of whole seconds, which no
# statement can set for itself (MariaDB's SET STATEMENT and MySQL's SET_VAR hint are
# each the other's unknown), so a locked read sets it and puts the old value back.
_MYSQL_SHORT_WAIT: Final = (
    "SET @wsgisession_lock_wait = @@SESSION.innodb_lock_wait_timeout,"
    " SESSION innodb_lock_wait_timeout = {seconds}"
)
_MYSQL_USUAL_WAIT: Final = "SET SESSION innodb_lock_wait_timeout = @wsgisession_lock_wait"

# The writers of this process on each SQLite file, by the file's real path. SQLite's
# busy handler polls with growing sleeps, so under contention a thread that has
# waited long keeps losing the write lock to newcomers; queued here first, this
# process's writers get it in the order they asked, and the busy handler is left
# to sort out only other processes.
_SQLITE_WRITERS: Final = Turns()

# What a driver's message quotes is where it puts values ("Duplicate entry '<key>'",
# PostgreSQL's 'invalid input syntax: "<value>"'): from a quote that is no
# apostrophe inside a word to the last quote of its kind on the line, since a value
# may hold quotes itself, or to the end of the line.
_QUOTED: Final = re.compile(r"""(?<!\w)(['"])(?:.*\1|.*)""")


class Runner:
    """Run operations on pooled connections of *engine*, creating *table* on first use.

    :param engine: The store's engine.
    :param table: The sessions table, created (with its indexes) if missing before
        the first operation runs.
    """

    def __init__(self, engine: sa.Engine, table: sa.Table) -> None:
        self.engine = engine
        self.table = table
        self._shown = shown_url(engine.url)
        dbapi_error = getattr(engine.dialect.loaded_dbapi, "Error", sa.exc.SQLAlchemyError)
        self._errors: tuple[type[BaseException], ...] = (sa.exc.SQLAlchemyError, dbapi_error)
        self._table_ready = False
        self._table_lock = threading.Lock()
        self._begin = begin_statement(engine)
        self._foreign = not built_by_store(engine)
        # An engine of the store's own is in autocommit already. On any other
        # PostgreSQL engine a lone statement switches its connection to autocommit,
        # to save the round trips of BEGIN and COMMIT; other databases' drivers
        # would send a SET for it, which saves nothing.
        self._dialect = engine.dialect.name
        self._switch_autocommit = self._begin is None and self._dialect == "postgresql"
        self._database = ""
        self._busy = 0.0
        if self._dialect == "sqlite":
            self._database = os.path.realpath(engine.url.database or "")
            self._busy = busy_timeout(engine)

    def run(
        self,
        operation: Callable[[sa.Connection], _T],
        *,
        single: bool = False,
        writes: bool = False,
    ) -> _T:
        """Run *operation* on a pooled connection, translating errors.

        *single* says it sends one statement, atomic by itself, which then runs in
        autocommit, without ``BEGIN`` and ``COMMIT`` around it: two round trips fewer
        on PostgreSQL. An operation that writes opens its transaction with
        :meth:`transaction`. One that only reads opens none: it runs in the one
        SQLAlchemy begins by itself, which closing the connection ends with a single
        rollback, where a commit would be followed by the pool's rollback on return.

        *writes* says it writes. On SQLite it then first waits its turn behind this
        process's earlier writes, as :meth:`write_turn` does, for at most the busy
        timeout; a wait that runs out is a :exc:`StoreError`, as a busy database is.
        """
        try:
            self._ensure_table()
            if writes and self._database:
                with _SQLITE_WRITERS.hold(self._database, self._busy) as taken:
                    if not taken:
                        raise StoreError(
                            f"{self._shown}: database is locked: this"
                            f" process's earlier writes held it {self._busy:g} s"
                        )
                    return self._run_with_retries(operation, single)
            return self._run_with_retries(operation, single)
        except sa.exc.StatementError as exc:
            # The parameters are session data; they must not reach a log through
            # the chained exception either, even on an engine built without
            # hide_parameters.
            exc.hide_parameters = True
            raise StoreError(f"{self._shown}: {_describe(exc)}") from exc
        except self._errors as exc:
            raise StoreError(f"{self._shown}: {_describe(exc)}") from exc

    def transaction(self, conn: sa.Connection, *, single: bool = False) -> sa.RootTransaction:
        """Begin a transaction on *conn* for one statement or, unless *single*, several.

        On an engine in autocommit (see :func:`begin_statement`) a single statement
        needs no transaction on the server, and several get one that the store
        opens itself: ``BEGIN IMMEDIATE`` on SQLite, which takes the write lock up
        front. Every transaction of several statements writes.

        An engine the application passed in may be in autocommit too, unknown to the
        store: there begin() sends nothing and each statement would commit on its
        own, so for several statements the connection is given the database's
        default isolation level first (the pool restores the engine's on return).
        """
        if not single and self._foreign:
            conn.execution_options(isolation_level=conn.default_isolation_level)
        transaction = conn.begin()
        if not single and self._begin is not None:
            try:
                conn.exec_driver_sql(self._begin)
            except BaseException:
                # Left begun, the connection refuses the next begin() of a retry.
                transaction.rollback()
                raise
        return transaction

    @contextmanager
    def write_turn(self, timeout: float, named: str) -> Iterator[None]:
        """Wait for this process's turn to write, for the block, on SQLite.

        The turn is given first come, first served, to :meth:`run`'s writes and to
        the blocks of this method alike; it passes to the next in line at the end of
        the block. Other databases lock rows and queue their waiters themselves, so
        there the block runs at once.

        :raises LockTimeout: The turn did not come within *timeout* seconds; the
            message names the store and *named*, what was to be locked.
        """
        if not self._database:
            yield
            return
        with _SQLITE_WRITERS.hold(self._database, timeout) as taken:
            if not taken:
                raise self._timed_out(named, timeout)
            yield

    def begin_locked(
        self,
        conn: sa.Connection,
        query: sa.Select[Any],
        params: dict[str, Any],
        *,
        timeout: float,
        named: str,
    ) -> tuple[sa.RootTransaction, sa.Row[Any] | None]:
        """Begin a transaction on *conn* that holds the lock *query* takes, and run it.

        *query* is a ``SELECT … FOR UPDATE``, whose row lock the server gives to its
        waiters (in the order they asked on MariaDB; on PostgreSQL the first waiter
        next, the others as they find the row's newest version). SQLite has no row
        locks: there the
        transaction holds the database's write lock (``BEGIN IMMEDIATE``), which
        :meth:`write_turn` must be held for. Either way the wait for the lock lasts at
        most *timeout* seconds (rounded up to whole seconds on MySQL), and the
        connection keeps its own lock timeout for later statements.

        Return the transaction, which the caller commits or rolls back, and the row
        the query found. Should this raise, closing the connection rolls back.

        :raises LockTimeout: The lock did not come within *timeout* seconds.
        """
        if self._dialect == "sqlite":
            transaction = self._begin_immediate(conn, timeout, named)
            return transaction, conn.execute(query, params).first()
        transaction = self.transaction(conn)
        mysql = self._dialect in ("mysql", "mariadb")
        if mysql:
            conn.exec_driver_sql(_MYSQL_SHORT_WAIT.format(seconds=max(1, math.ceil(timeout))))
        elif self._dialect == "postgresql":
            # In milliseconds, up to PostgreSQL's largest (24.8 days); 0 would mean no
            # limit at all.
            wait = min(max(1, math.ceil(timeout * 1000)), _PG_LONGEST_WAIT)
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait}")
        try:
            row = conn.execute(query, params).first()
        except sa.exc.DBAPIError as exc:
            # A dropped connection is thrown away; any other goes back to the pool.
            if mysql and not exc.connection_invalidated:
                conn.exec_driver_sql(_MYSQL_USUAL_WAIT)
            if _lock_timed_out(exc):
                exc.hide_parameters = True  # the key, kept out of a logged traceback
                raise self._timed_out(named, timeout) from exc
            raise
        if mysql:
            conn.exec_driver_sql(_MYSQL_USUAL_WAIT)
        return transaction, row

    def _begin_immediate(
        self, conn: sa.Connection, timeout: float, named: str
    ) -> sa.RootTransaction:
        # The busy timeout is the connection's; it is cut to what is left of the wait
        # for this BEGIN, and set back before any other statement runs.
        if self._foreign:
            conn.execution_options(isolation_level=conn.default_isolation_level)
        transaction = conn.begin()
        usual = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {max(0, math.ceil(timeout * 1000))}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except sa.exc.DBAPIError as exc:
            if _lock_timed_out(exc):
                raise self._timed_out(named, timeout) from exc
            raise
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(usual)}")
        return transaction

    def _timed_out(self, named: str, timeout: float) -> LockTimeout:
        return LockTimeout(f"{self._shown}: {named} stayed locked {timeout:g} s")

    def _run_with_retries(self, operation: Callable[[sa.Connection], _T], single: bool) -> _T:
        attempt = 1
        while True:
            try:
                with self._connect() as conn:
                    if single and self._switch_autocommit:
                        conn.execution_options(isolation_level="AUTOCOMMIT")
                    return operation(conn)
            except sa.exc.DBAPIError as exc:
                # A pooled connection the server dropped (a restart, an idle timeout)
                # is replaced, with the rest of the pool, and the operation runs once
                # more: cheaper than pinging before every operation, and safe, as a
                # save is a compare-and-set and the other writes are idempotent.
                dropped = exc.connection_invalidated and attempt == 1
                if attempt >= _ATTEMPTS or not (dropped or _must_retry(exc)):
                    raise
            time.sleep(random.uniform(0, 0.002 * attempt))
            attempt += 1

    def _connect(self) -> sa.Connection:
        try:
            return self.engine.connect()
        except TypeError as exc:
            # Drivers check their connect() arguments with plain Python, which
            # SQLAlchemy passes on untranslated.
            raise StoreError(
                f"{self._shown}: the driver refused an argument of the connection"
                f" (store option 'connect_args', or the URL's query): {_describe(exc)}"
            ) from exc

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        with self._table_lock:
            if self._table_ready:
                return
            with self._connect() as conn:
                # Looked for first, which takes no write lock: on SQLite another
                # process's long write would hold up (or fail) every first use.
                found = sa.inspect(conn)
                # The inspector doesn't apply the engine's schema_translate_map, which
                # the CREATE and every statement do: looked for where they will go.
                translate = conn.get_execution_options().get("schema_translate_map") or {}
                schema = translate.get(self.table.schema, self.table.schema)
                exists = found.has_table(self.table.name, schema)
                if exists:
                    self._check_table(found, schema)
                conn.rollback()  # what SQLAlchemy began for the look, before ours
                if exists:
                    self._table_ready = True
                    return
                attempt = 1
                while True:
                    try:
                        with self.transaction(conn):
                            self.table.create(conn, checkfirst=True)
                            if attempt > 1:
                                # MySQL creates the indexes after the table, outside
                                # its transaction: the winner may still be at it.
                                for index in self.table.indexes:
                                    index.create(conn, checkfirst=True)
                        break
                    except sa.exc.DBAPIError as exc:
                        # Another process created the table or an index between
                        # our check and our CREATE; checking again finds it.
                        if attempt >= _ATTEMPTS or exc.connection_invalidated:
                            raise
                    attempt += 1
            self._table_ready = True

    def _check_table(self, found: sa.Inspector, schema: str | None) -> None:
        """Refuse a table of the store's name that was made for something else.

        Without its columns every operation fails on a database error; without
        ``id_hash`` as its primary key, MySQL's insert-unless-live and the purge lease
        would write a second row where there must be one.
        """
        table = self.table
        columns = {column["name"] for column in found.get_columns(table.name, schema)}
        missing = [column.name for column in table.columns if column.name not in columns]
        key = found.get_pk_constraint(table.name, schema).get("constrained_columns")
        if missing or key != ["id_hash"]:
            what = f"no column {', '.join(missing)}" if missing else "no primary key on id_hash"
            raise StoreError(
                f"{self._shown}: table {table.name!r} exists but was not made by this store "
                f"({what}): give the store a table of its own (store option 'table_name')"
            )


#: PostgreSQL's longest lock_timeout, in milliseconds.
_PG_LONGEST_WAIT: Final = 2_147_483_647


def _describe(exc: BaseException) -> str:
    """What *exc* says went wrong, fit for a message that may be logged or shown.

    The error's class, the driver's exception and code, and the first line of the
    driver's message with what it quotes left out. Never the statement, its
    parameters, or anything after the first line, such as PostgreSQL's ``DETAIL``
    (``Key (id_hash)=(…) already exists``, ``Failing row contains (…)``).
    """
    cause = getattr(exc, "orig", None) or exc
    args: tuple[object, ...] = getattr(cause, "args", ())
    code: object = None
    if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):
        code, text = args[0], args[1]  # MySQL's drivers: (errno, message)
    else:
        code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        code = code or getattr(cause, "sqlite_errorname", None)
        text = str(cause)
    line = _QUOTED.sub(_elide, text.strip().partition("\n")[0])
    name = type(exc).__name__
    if cause is not exc:
        name += f" ({type(cause).__module__}.{type(cause).__qualname__}"
        name += f" {code})" if code is not None else ")"
    return f"{name}: {line}" if line else name


def _elide(quoted: re.Match[str]) -> str:
    quote = quoted.group(1)
    closed = len(quoted.group()) > 1 and quoted.group().endswith(quote)
    return f"{quote}…{quote}" if closed else f"{quote}…"


def _lock_timed_out(exc: sa.exc.DBAPIError) -> bool:
    """Whether *exc* says that a wait for a lock ran out."""
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in _LOCK_SQLSTATES:
        return True
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        # The extended codes of SQLITE_BUSY keep it in their low byte.
        return code & 0xFF == _SQLITE_BUSY
    args: tuple[object, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in _LOCK_MYSQL_ERRNOS


def _must_retry(exc: sa.exc.DBAPIError) -> bool:
    """Whether *exc* is a deadlock or serialization failure, safe to run again."""
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in _RETRY_SQLSTATES:
        return True
    args: tuple[object, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in _RETRY_MYSQL_ERRNOS
