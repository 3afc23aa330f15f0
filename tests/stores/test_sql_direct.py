"""The SQL store's request path sent through the driver's cursor (docs/stores/sql.rst).

The statements must reach the database exactly as SQLAlchemy would send them, fail
with SQLAlchemy's own exceptions, and go through SQLAlchemy whenever something watches
it: an engine that logs, or one with execution event listeners.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.helpers import OpenSQL
from wsgisession.stores._sql_direct import Direct
from wsgisession.stores.sql import SQLStore
from wsgisession.testing import make_record, new_key

# What a statement looks like with its values taken out, to compare statements sent
# for different keys at different times.
_VALUES = re.compile(r"x'[0-9a-fA-F]*'|'(?:[^']|'')*'|\b\d+(?:\.\d+)?(?:e[-+]?\d+)?\b")


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLStore]:
    store = SQLStore.from_url(f"sqlite:///{tmp_path / 'direct.db'}")
    yield store
    store.close()


def _traced(store: SQLStore) -> list[str]:
    """Every statement SQLite runs for *store* from now on, values taken out.

    SQLite's own trace sees what reaches the database whichever way it was sent;
    listening for it is a pool event, which leaves the store's path as it is.
    """
    shapes: list[str] = []

    def trace(statement: str) -> None:
        shapes.append(_VALUES.sub("?", " ".join(statement.split())))

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        dbapi_connection.set_trace_callback(trace)

    sa.event.listen(store.engine.pool, "checkout", on_checkout)
    return shapes


def _request_path(store: SQLStore) -> None:
    key, other = new_key(), new_key()
    assert store.save(key, make_record(b"v1", user_id="\u00e9l\u00e8ve"), expected_version=None)
    assert store.save(key, make_record(b"v2\x00", version=2), expected_version=1)
    assert not store.save(key, make_record(b"v3", version=3), expected_version=1)
    loaded = store.load(key)
    assert loaded is not None and loaded.data == b"v2\x00" and loaded.version == 2
    assert store.refresh(key, time.time() + 7200, time.time(), version=2)
    assert store.save(other, make_record(b"new"), expected_version=None, replaces=key)
    assert store.load(key) is None
    assert store.delete(other)


def test_the_driver_gets_the_statements_sqlalchemy_would_send(sqlite_store: SQLStore) -> None:
    sqlite_store.ping()
    direct = _traced(sqlite_store)
    _request_path(sqlite_store)
    sent = list(direct)
    # A listener sends every statement through SQLAlchemy.
    sa.event.listen(sqlite_store.engine, "before_cursor_execute", lambda *args: None)
    direct.clear()
    _request_path(sqlite_store)
    assert sent == direct
    assert [shape.split()[0] for shape in sent].count("SELECT") == 2


def test_round_trips_keep_every_value_exactly(open_sql: OpenSQL) -> None:
    store = open_sql()
    key = new_key()
    record = make_record(
        bytes(range(256)) * 3,
        version=2**53 + 1,
        user_id="\u00e9l\u00e8ve \U0001f600",
        meta=b'{"t":[1.0000000000000002]}',
    )
    assert store.save(key, record, expected_version=None)
    assert store.load(key) == record


@pytest.mark.parametrize("event", ["before_cursor_execute", "after_execute"])
def test_a_listener_added_later_sees_every_statement(open_sql: OpenSQL, event: str) -> None:
    store = open_sql()
    key = new_key()
    assert store.save(key, make_record(b"before"), expected_version=None)
    seen: list[Any] = []
    sa.event.listen(store.engine, event, lambda *args: seen.append(args))
    assert store.load(key) is not None
    assert store.save(key, make_record(b"after", version=2), expected_version=1)
    assert len(seen) == 2


def test_a_handle_error_listener_sees_the_failure(sqlite_store: SQLStore) -> None:
    sqlite_store.ping()
    failures: list[Any] = []
    sa.event.listen(sqlite_store.engine, "handle_error", failures.append)
    direct = Direct(sqlite_store.engine)
    with sqlite_store.engine.connect() as conn, pytest.raises(sa.exc.OperationalError):
        direct.first(conn, sa.select(sa.text("1")).select_from(sa.text("missing")), {})
    assert len(failures) == 1


def test_echo_logs_every_statement(open_sql: OpenSQL, caplog: pytest.LogCaptureFixture) -> None:
    store = open_sql(echo=True)
    key = new_key()
    with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
        assert store.save(key, make_record(b"x"), expected_version=None)
        assert store.load(key) is not None
    logged = [r.getMessage().split()[0] for r in caplog.records if r.name.startswith("sqlalchemy")]
    assert "INSERT" in logged and "SELECT" in logged


def _duplicate(store: SQLStore) -> Callable[[sa.Connection], int]:
    store.ping()
    key = new_key()
    assert store.save(key, make_record(b"secret-value"), expected_version=None)
    insert = sa.insert(store.table).values(
        id_hash=sa.bindparam("key"),
        data=sa.bindparam("data"),
        meta=b"",
        version=1,
        created_at=0.0,
        expires_at=0.0,
        last_seen=0.0,
    )
    direct = Direct(store.engine)
    return lambda conn: direct.rowcount(conn, insert, {"key": key, "data": b"secret-value"})


def test_a_driver_error_is_sqlalchemys_own_without_the_values(open_sql: OpenSQL) -> None:
    store = open_sql()
    insert = _duplicate(store)
    with store.engine.connect() as conn, pytest.raises(sa.exc.IntegrityError) as raised:
        insert(conn)
    assert not raised.value.connection_invalidated
    assert "secret-value" not in str(raised.value)
    # The connection is still good: the store goes on using the pool.
    assert store.load(new_key()) is None


def test_a_statement_on_a_closed_connection_raises_and_is_dropped(open_sql: OpenSQL) -> None:
    store = open_sql()
    store.ping()
    direct = Direct(store.engine)
    query = sa.select(store.table.c.version).where(store.table.c.id_hash == sa.bindparam("key"))
    with store.engine.connect() as conn:
        conn.connection.dbapi_connection.close()  # as a server gone away leaves it
        with pytest.raises(sa.exc.DBAPIError) as raised:
            direct.first(conn, query, {"key": new_key()})
        assert raised.value.connection_invalidated
        assert conn.invalidated
    assert store.load(new_key()) is None  # a fresh connection from the pool
