"""Sending the request path's statements through the driver's own cursor.

SQLAlchemy's execution layer (an execution context, a result object, the events it
fires) costs some 20 µs of Python a statement: twice what SQLite takes to run a
primary-key SELECT, and a tenth of a PostgreSQL round trip. The request path's
statements never change, so :class:`Direct` compiles each once for the engine's
dialect and sends it on the cursor of the connection's DBAPI connection, with the
parameters SQLAlchemy would send: the same names or order, its bind processors
applied, the statement's own literals filled in.

Everything around the statement stays SQLAlchemy's: the pool, the transaction the
store begins and commits, the isolation level it sets. A driver error is raised as
the exception SQLAlchemy would raise (:exc:`sqlalchemy.exc.IntegrityError` for a
duplicate key, and so on, with the driver's as ``orig``), and a dropped connection
is invalidated, with the rest of the pool's idle ones, as SQLAlchemy does, so the
runner retries and translates errors as before. A statement the dialect can't send
that way, and every statement of an engine that logs (``echo``) or has execution
event listeners (the application's tracing), go through
:meth:`sqlalchemy.engine.Connection.execute` instead, so nothing watching
SQLAlchemy misses one.
"""

from __future__ import annotations

import contextlib
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

    __slots__ = ("_compiled", "_dialect_dispatch", "_dispatch", "_engine", "_error")

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._dispatch = engine.dispatch
        # handle_error listeners live with the dialect's events, not the engine's.
        self._dialect_dispatch = engine.dialect.dispatch
        self._error: type[Exception] = engine.dialect.loaded_dbapi.Error
        #: Each statement's compiled form, by the statement; ``None`` for one that
        #: must go through SQLAlchemy.
        self._compiled: dict[Statement, _Compiled | None] = {}

    def first(
        self, conn: sa.Connection, statement: Statement, params: Mapping[str, Any]
    ) -> Sequence[Any] | None:
        """Run the query *statement* on *conn* and return its first row, or ``None``."""
        compiled = self._plan(statement)
        if compiled is None or self._watched():
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
        if compiled is None or self._watched():
            return conn.execute(statement, params).rowcount
        cursor = self._run(conn, compiled, params)
        try:
            count: int = cursor.rowcount
        finally:
            cursor.close()
        return count

    def _watched(self) -> bool:
        # Asked on every statement: listeners may be added to the engine at any time.
        dispatch = self._dispatch
        return bool(
            dispatch.before_cursor_execute
            or dispatch.after_cursor_execute
            or dispatch.before_execute
            or dispatch.after_execute
            or self._dialect_dispatch.handle_error
            or self._engine.echo
        )

    def _run(self, conn: sa.Connection, compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        values = {**compiled.literals, **params}
        for name, process in compiled.processors:
            values[name] = process(values[name])
        arguments: Any = values
        if compiled.order is not None:
            arguments = tuple([values[name] for name in compiled.order])
        fairy = conn.connection
        cursor = None
        try:
            cursor = fairy.cursor()
            cursor.execute(compiled.sql, arguments)
        except self._error as exc:
            _close_quietly(cursor)
            raise self._translated(conn, fairy, compiled.sql, exc) from exc
        except BaseException:
            _close_quietly(cursor)
            raise
        return cursor

    def _translated(
        self, conn: sa.Connection, fairy: Any, sql: str, error: Exception
    ) -> sa.exc.StatementError:
        """The exception SQLAlchemy would raise for *error*, the connection dropped if
        it is gone, with the idle ones of the pool, which a restart took as well."""
        dialect = self._engine.dialect
        driver_error: Any = error
        try:
            dropped = bool(dialect.is_disconnect(driver_error, fairy.dbapi_connection, None))
        except Exception:
            dropped = False
        if dropped:
            conn.invalidate(error)
            self._engine.pool.dispose()
        return sa.exc.DBAPIError.instance(
            sql,
            None,
            error,
            self._error,
            hide_parameters=True,
            dialect=dialect,
            connection_invalidated=dropped,
        )

    def _plan(self, statement: Statement) -> _Compiled | None:
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
