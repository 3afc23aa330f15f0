"""Sending the request path's statements through the driver's own cursor.

SQLAlchemy's execution layer (an execution context, a result object, the events it
fires) costs some 20 µs of Python a statement: twice what SQLite takes to run a
primary-key SELECT, and a tenth of a PostgreSQL round trip. The request path's
statements never change, so :class:`Direct` compiles each once for the engine's
dialect and sends it on the cursor of the connection's DBAPI connection, with the
parameters SQLAlchemy would send: the same names or order, its bind processors
applied, the statement's own literals filled in.

Everything around the statement stays SQLAlchemy's: the pool, the transactions (a
statement outside one begins one, as SQLAlchemy's own execute would, so closing the
connection ends it), the isolation level the store sets. A driver error is raised as
the exception SQLAlchemy would raise (:exc:`sqlalchemy.exc.IntegrityError` for a
duplicate key, and so on, with the driver's as ``orig``); a dropped connection is
invalidated, and the pool's older ones on the next checkout, through the pool's own
:exc:`~sqlalchemy.exc.InvalidatePoolError`, as SQLAlchemy does, so the runner retries
and translates errors as before; a statement interrupted by an exception that is no
error (a timeout raised into the thread) drops its connection. A statement the
dialect can't send that way, every statement of an engine with execution options
other than the isolation level, a log name and the store's own notes (such as
``schema_translate_map``), and every statement while something watches SQLAlchemy
(its log, execution or ``do_execute`` listeners, as tracing tools add) go through
:meth:`sqlalchemy.engine.Connection.execute` instead.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple, TypeAlias

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import BindTyping

__all__ = ["Direct", "Statement"]

#: What the request path sends.
Statement: TypeAlias = sa.Select[Any] | sa.Insert | sa.Update | sa.Delete

# The bind typings whose parameters are plain values, the statement saying the rest:
# a dialect that sets input sizes on the cursor must go through SQLAlchemy.
_PLAIN_BINDS: Final = frozenset({BindTyping.NONE, BindTyping.RENDER_CASTS})


# Execution options that leave statements and rows as they are: the isolation level,
# which the connection carries, a name for SQLAlchemy's log, and the store's own notes.
_HARMLESS_OPTIONS: Final = frozenset({"isolation_level", "logging_token"})
_STORE_OPTIONS: Final = "wsgisession_"


class _Compiled(NamedTuple):
    """A statement as the driver takes it, and how to make its parameters."""

    sql: str
    #: The parameter names in the order of a positional dialect's placeholders.
    order: tuple[str, ...] | None
    #: The values of the statement's own literals, by parameter name, processed.
    literals: Mapping[str, Any]
    #: The bind processors of the caller's parameters, by name.
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]


class Direct:
    """Runs statements of the request path on the engine's DBAPI cursors.

    :param engine: The store's engine.
    """

    __slots__ = (
        "_compiled",
        "_dialect_dispatch",
        "_drop_pool",
        "_engine",
        "_error",
        "_listening",
        "_lock",
        "_logger",
        "_plain",
    )

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        # handle_error and do_execute listeners live with the dialect's events.
        self._dialect_dispatch = engine.dialect.dispatch
        self._logger = engine.logger
        self._error: type[Exception] = engine.dialect.loaded_dbapi.Error
        # Execution options other than these change what a statement becomes
        # (schema_translate_map) or how its rows come: SQLAlchemy's to apply.
        self._plain = all(
            name in _HARMLESS_OPTIONS or name.startswith(_STORE_OPTIONS)
            for name in engine.get_execution_options()
        )
        #: Each statement's compiled form, by the statement; ``None`` for one that
        #: must go through SQLAlchemy.
        self._compiled: dict[Statement, _Compiled | None] = {}
        # A dropped connection drops the pool's older ones on the next checkout (see
        # _checkout), through a listener added on the first drop.
        self._drop_pool = False
        self._listening = False
        self._lock = threading.Lock()

    def first(
        self, conn: sa.Connection, statement: Statement, params: Mapping[str, Any]
    ) -> Sequence[Any] | None:
        """Run the query *statement* on *conn* and return its first row, or ``None``."""
        compiled = self._plan(statement)
        if compiled is None or self._watched(conn):
            return conn.execute(statement, params).first()
        cursor = self._run(conn, compiled, params)
        try:
            row: Sequence[Any] | None = cursor.fetchone()
        finally:
            cursor.close()
        return row

    def rowcount(
        self, conn: sa.Connection, statement: Statement, params: Mapping[str, Any]
    ) -> int:
        """Run *statement* on *conn* and return how many rows it matched."""
        compiled = self._plan(statement)
        if compiled is None or self._watched(conn):
            return conn.execute(statement, params).rowcount
        cursor = self._run(conn, compiled, params)
        try:
            count: int = cursor.rowcount
        finally:
            cursor.close()
        return count

    def _watched(self, conn: sa.Connection) -> bool:
        # Asked on every statement: listeners may come and go at any time. The
        # connection's events join the engine's and those of both classes.
        events = conn.dispatch
        dialect = self._dialect_dispatch
        return bool(
            events.before_cursor_execute
            or events.after_cursor_execute
            or events.before_execute
            or events.after_execute
            or dialect.handle_error
            or dialect.do_execute
            or dialect.do_execute_no_params
            or self._logger.isEnabledFor(logging.INFO)  # echo, or logging configured
        )

    def _run(self, conn: sa.Connection, compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        values = {**compiled.literals, **params}
        for name, process in compiled.processors:
            values[name] = process(values[name])
        arguments: Any = values
        if compiled.order is not None:
            arguments = tuple([values[name] for name in compiled.order])
        if not conn.in_transaction():
            # As SQLAlchemy's own execute would: closing the connection then ends
            # the driver's transaction, whatever the pool does on return.
            conn.begin()
        fairy = conn.connection
        cursor = None
        try:
            cursor = fairy.cursor()
            cursor.execute(compiled.sql, arguments)
        except Exception as exc:
            _close_quietly(cursor)
            raise self._translated(conn, fairy, compiled.sql, exc) from exc
        except BaseException as exc:
            # Interrupted (a timeout raised into the thread, Ctrl-C): the connection's
            # state is unknown, so it goes, as SQLAlchemy has it.
            _close_quietly(cursor)
            with contextlib.suppress(Exception):
                conn.invalidate(exc)
            raise
        return cursor

    def _translated(
        self, conn: sa.Connection, fairy: Any, sql: str, error: Exception
    ) -> sa.exc.StatementError:
        """The exception SQLAlchemy would raise for *error*; a dropped connection is
        invalidated, and the pool's older ones with it, which a restart took as well."""
        dialect = self._engine.dialect
        dropped = False
        if isinstance(error, self._error):
            driver_error: Any = error
            try:
                dropped = bool(dialect.is_disconnect(driver_error, fairy.dbapi_connection, None))
            except Exception:
                dropped = False
        if dropped:
            conn.invalidate(error)
            self._drop_older()
        return sa.exc.DBAPIError.instance(
            sql,
            None,
            error,
            self._error,
            hide_parameters=True,
            dialect=dialect,
            connection_invalidated=dropped,
        )

    def _drop_older(self) -> None:
        """Have the next checkout invalidate every connection of the pool made before it."""
        with self._lock:
            self._drop_pool = True
            if not self._listening:
                sa.event.listen(self._engine.pool, "checkout", self._checkout)
                self._listening = True

    def _checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if self._drop_pool:
            self._drop_pool = False
            # The pool's own way to drop every connection older than now, as
            # SQLAlchemy does on a disconnect; this one is made afresh.
            raise sa.exc.InvalidatePoolError("a connection of the pool was dropped")

    def _plan(self, statement: Statement) -> _Compiled | None:
        if not self._plain:
            return None
        try:
            return self._compiled[statement]
        except KeyError:
            pass
        compiled = _compile(statement, self._engine.dialect)
        self._compiled[statement] = compiled
        return compiled


def _compile(statement: Statement, dialect: sa.Dialect) -> _Compiled | None:
    """*statement* as the driver takes it, or ``None`` if only SQLAlchemy can send it."""
    if dialect.bind_typing not in _PLAIN_BINDS:
        return None
    compiled: Any = statement.compile(dialect=dialect)
    if (
        compiled.literal_execute_params
        or compiled.post_compile_params
        or getattr(compiled, "escaped_bind_names", None)
    ):
        return None
    literals: dict[str, Any] = {}
    processors: list[tuple[str, Callable[[Any], Any]]] = []
    for bind, name in compiled.bind_names.items():
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if bind.required:
            if process is not None:
                processors.append((name, process))
        else:
            # A literal of the statement itself (``version > 0``), bound once.
            value = bind.effective_value
            literals[name] = value if process is None else process(value)
    order = tuple(compiled.positiontup) if compiled.positional else None
    return _Compiled(str(compiled), order, literals, tuple(processors))


def _close_quietly(cursor: Any) -> None:
    # A cursor of a connection that just failed may fail to close as well; the
    # statement's own error is the one to raise.
    if cursor is None:
        return
    with contextlib.suppress(Exception):
        cursor.close()
