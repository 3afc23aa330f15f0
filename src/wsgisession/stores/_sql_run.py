"""How :class:`~wsgisession.stores.sql.SQLStore` gets an operation to its database.

An operation is a function of one connection that sends the store's statements.
Getting it there takes more than a connection from the pool: the table is created
on first use, a pooled connection the server dropped is replaced and the operation
run once more, a deadlock or serialization failure is retried, a transaction is
opened the way the engine needs (an engine in autocommit gets its ``BEGIN`` from
the store), and the driver's errors become :exc:`~wsgisession.errors.StoreError`
with the session data kept out of their messages.

Kept apart from :mod:`wsgisession.stores.sql` so that the store reads as the
statements of each operation, with how they reach the database in one place.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar

import sqlalchemy as sa

from ._sql_schema import begin_statement, built_by_store
from .base import translate_errors

__all__ = ["Runner", "must_retry"]

_T = TypeVar("_T")

_ATTEMPTS: Final = 8

# A deadlock or serialization failure rolls the whole transaction back, so running
# the operation again is safe; these are the codes that mean exactly that.
_RETRY_SQLSTATES: Final = frozenset({"40001", "40P01"})
_RETRY_MYSQL_ERRNOS: Final = frozenset({1020, 1213})


class Runner:
    """Run operations on pooled connections of *engine*, creating *table* on first use.

    :param engine: The store's engine.
    :param table: The sessions table, created (with its indexes) if missing before
        the first operation runs.
    """

    def __init__(self, engine: sa.Engine, table: sa.Table) -> None:
        self.engine = engine
        self.table = table
        self._what = engine.url.render_as_string(hide_password=True)
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
        self._switch_autocommit = self._begin is None and engine.dialect.name == "postgresql"

    def run(self, operation: Callable[[sa.Connection], _T], *, single: bool = False) -> _T:
        """Run *operation* on a pooled connection, translating errors.

        *single* says it sends one statement, atomic by itself, which then runs in
        autocommit, without ``BEGIN`` and ``COMMIT`` around it: two round trips fewer
        on PostgreSQL. An operation that writes opens its transaction with
        :meth:`transaction`. One that only reads opens none: it runs in the one
        SQLAlchemy begins by itself, which closing the connection ends with a single
        rollback, where a commit would be followed by the pool's rollback on return.
        """
        with translate_errors(self._what, *self._errors):
            try:
                self._ensure_table()
                return self._attempt(operation, single)
            except sa.exc.StatementError as exc:
                # The parameters are session data; they must not reach a log
                # through the message, even on an engine built without
                # hide_parameters.
                exc.hide_parameters = True
                raise

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
            # Should this fail, closing the connection rolls the transaction back.
            conn.exec_driver_sql(self._begin)
        return transaction

    def _attempt(self, operation: Callable[[sa.Connection], _T], single: bool) -> _T:
        attempt = 1
        while True:
            try:
                with self.engine.connect() as conn:
                    if single and self._switch_autocommit:
                        conn.execution_options(isolation_level="AUTOCOMMIT")
                    return operation(conn)
            except sa.exc.DBAPIError as exc:
                # A pooled connection the server dropped (a restart, an idle timeout)
                # is replaced, with the rest of the pool, and the operation runs once
                # more: cheaper than pinging before every operation, and safe, as a
                # save is a compare-and-set and the other writes are idempotent.
                dropped = exc.connection_invalidated and attempt == 1
                if attempt >= _ATTEMPTS or not (dropped or must_retry(exc)):
                    raise
            time.sleep(random.uniform(0, 0.002 * attempt))
            attempt += 1

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        with self._table_lock:
            if self._table_ready:
                return
            with self.engine.connect() as conn:
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


def must_retry(exc: sa.exc.DBAPIError) -> bool:
    """Whether *exc* is a deadlock or serialization failure, safe to run again."""
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in _RETRY_SQLSTATES:
        return True
    args: tuple[object, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in _RETRY_MYSQL_ERRNOS
