"""The SQL store's request path sent through the driver's cursor (docs/stores/sql.rst).

The statements must reach the database exactly as SQLAlchemy would send them, fail
with SQLAlchemy's own exceptions, and go through SQLAlchemy whenever something watches
it: an engine that logs, or one with execution event listeners.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.helpers import PATIENCE, OpenSQL, reachable_sql_url
from tests.tcp_proxy import TCPProxy
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


# -- what the review of the direct path found -------------------------------------------


@pytest.fixture
def server_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.mark.parametrize("server_kind", ["postgresql"], indirect=True)
def test_a_schema_translate_map_puts_rows_where_it_says(
    server_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = reachable_sql_url(server_kind, request, tmp_path)
    schema, table = f"tenant_{uuid.uuid4().hex[:8]}", f"direct_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    # Another store's table of the same name in the default schema, where a statement
    # that forgets the map would go, and which the store must not take for its own.
    untranslated = SQLStore.from_url(url, table_name=table)
    untranslated.ping()
    engine = sa.create_engine(url).execution_options(schema_translate_map={None: schema})
    try:
        store = SQLStore(engine, table_name=table)
        key = new_key()
        assert store.save(key, make_record(b"tenant's"), expected_version=None)
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"tenant's"
        with admin.connect() as conn:
            for where, rows in ((f"{schema}.{table}", 1), (table, 0)):
                assert conn.exec_driver_sql(f"SELECT count(*) FROM {where}").scalar() == rows
    finally:
        engine.dispose()
        untranslated.table.drop(untranslated.engine, checkfirst=True)
        untranslated.close()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def test_a_read_ends_its_transaction_whatever_the_pool_does(sql_url: str) -> None:
    """A REPEATABLE READ snapshot kept open by a read would show the next request
    what the session held before other requests saved it."""
    table = f"direct_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(sql_url, pool_size=1, max_overflow=0, pool_reset_on_return=None)
    writer = SQLStore.from_url(sql_url, table_name=table)
    try:
        reader = SQLStore(engine, table_name=table)
        key = new_key()
        assert writer.save(key, make_record(b"v1"), expected_version=None)
        assert (first := reader.load(key)) is not None and first.data == b"v1"
        assert writer.save(key, make_record(b"v2", version=2), expected_version=1)
        assert (second := reader.load(key)) is not None and second.data == b"v2"
    finally:
        engine.dispose()  # first: a transaction left open would hold up the DROP
        writer.table.drop(writer.engine, checkfirst=True)
        writer.close()


def test_logging_and_other_ways_of_watching_see_every_statement(
    sqlite_store: SQLStore, caplog: pytest.LogCaptureFixture
) -> None:
    sqlite_store.ping()
    watchers: list[tuple[Any, str, Callable[..., Any]]] = []
    seen: list[str] = []

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        seen.append(sql.split()[0])

    def do_execute(cursor: Any, sql: str, *args: Any) -> None:
        seen.append(sql.split()[0])

    try:
        for target, event, listener in (
            (sa.engine.Connection, "before_cursor_execute", statement),
            (sqlite_store.engine, "do_execute", do_execute),
        ):
            sa.event.listen(target, event, listener)
            watchers.append((target, event, listener))
            seen.clear()
            _request_path(sqlite_store)
            assert seen.count("SELECT") == 2, event
            sa.event.remove(target, event, listener)
            watchers.pop()
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
            _request_path(sqlite_store)
        logged = [r.getMessage().split()[0] for r in caplog.records]
        assert logged.count("SELECT") == 2
    finally:
        for target, event, listener in watchers:
            sa.event.remove(target, event, listener)


class _Interrupted(BaseException):
    """Raised into the thread from outside, as gevent's Timeout is."""


@pytest.mark.parametrize("server_kind", ["postgresql", "mariadb"], indirect=True)
def test_an_interrupted_statement_drops_its_connection(
    server_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = reachable_sql_url(server_kind, request, tmp_path)
    table = f"direct_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url, pool_size=1, max_overflow=0)
    store = SQLStore(engine, table_name=table)
    locker_engine = sa.create_engine(url)
    key = new_key()
    locked, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        # In a thread of its own, so that a save that never gives up can't keep the
        # lock held for ever: the lock goes after a few seconds whatever happens.
        with locker_engine.connect() as locker:
            query = store.table.select().where(store.table.c.id_hash == key)
            locker.execute(query.with_for_update()).all()
            locked.set()
            release.wait(PATIENCE)
            locker.rollback()

    try:
        assert store.save(key, make_record(b"v1"), expected_version=None)
        holder = threading.Thread(target=hold_the_row)
        holder.start()
        assert locked.wait(PATIENCE)

        def interrupt(signum: int, frame: Any) -> None:
            raise _Interrupted

        previous = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            with pytest.raises(_Interrupted):
                store.save(key, make_record(b"v2", version=2), expected_version=1)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            release.set()
            holder.join()
        # A fresh connection: the interrupted one, its reply still owed, was dropped.
        # (PostgreSQL may still run the UPDATE it was sent, once the lock is free.)
        loaded = store.load(key)
        assert loaded is not None and loaded.data in (b"v1", b"v2")
        after = make_record(b"v3", version=loaded.version + 1)
        assert store.save(key, after, expected_version=loaded.version)
    finally:
        store.table.drop(locker_engine, checkfirst=True)
        locker_engine.dispose()
        engine.dispose()


@pytest.mark.parametrize("server_kind", ["postgresql", "mariadb"], indirect=True)
def test_a_dropped_connection_takes_the_pools_older_ones_with_it(
    server_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """After a restart every pooled connection is dead: the retry must get a new one."""
    url = sa.make_url(reachable_sql_url(server_kind, request, tmp_path))
    with TCPProxy((url.host or "127.0.0.1", url.port or 0)) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port)
        engine = sa.create_engine(proxied, pool_size=3, max_overflow=0, pool_timeout=0.5)
        store = SQLStore(engine, table_name=f"direct_{uuid.uuid4().hex[:12]}")
        key = new_key()
        try:
            assert store.save(key, make_record(b"kept"), expected_version=None)
            held = [engine.connect() for _ in range(3)]  # three pooled connections
            for conn in held[1:]:
                conn.close()
            proxy.cut()
            proxy.restore()
            # Each of the two idle ones is dead: the retry after the first must not
            # get the second.
            loaded = store.load(key)
            assert loaded is not None and loaded.data == b"kept"
            assert store.save(key, make_record(b"again", version=2), expected_version=1)
            # And the pool still holds to its size, with one connection checked out
            # through the drop.
            more = [engine.connect() for _ in range(2)]
            with pytest.raises(sa.exc.TimeoutError):
                engine.connect()
            for conn in [*more, held[0]]:
                conn.close()
        finally:
            store.table.drop(engine, checkfirst=True)
            engine.dispose()


def test_the_request_path_of_a_store_built_from_a_url_skips_sqlalchemys_execute(
    open_sql: OpenSQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_sql()
    store.ping()  # the table, created through SQLAlchemy

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a request-path statement went through Connection.execute")

    monkeypatch.setattr(sa.engine.Connection, "execute", refuse)
    _request_path(store)
