"""The SQL store when things fail: a statement failing between BEGIN and COMMIT, a
connection dropped inside a transaction or before its reply, engines in autocommit,
a locked save whose build fails or whose connection drops, a database going away and
coming back, and what a failure's message says (never a key, a row or a password).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.helpers import (
    SQL_SERVER_KINDS,
    server_url,
    unique_table_name,
    unreachable,
)
from tests.tcp_proxy import TCPProxy
from wsgisession.errors import StoreError
from wsgisession.stores import Record
from wsgisession.stores.sql import SQLStore
from wsgisession.testing import make_record, make_tombstone, new_key


@pytest.fixture
def table_name() -> str:
    """A table name no other test uses."""
    return unique_table_name()


@pytest.fixture
def observer(sql_url: str, table_name: str) -> Iterator[sa.Engine]:
    """An engine of the test's own, apart from the store's pool; drops the table after."""
    engine = sa.create_engine(sql_url)
    try:
        yield engine
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table_name}")
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {table_name}_boom()")
        engine.dispose()


def _committed(observer: sa.Engine, table: sa.Table, key: str) -> bool:
    """Whether a row under *key* is committed, as another connection sees it."""
    with observer.connect() as conn:
        return (
            conn.execute(sa.select(table.c.id_hash).where(table.c.id_hash == key)).first()
            is not None
        )


def _fail_inserts_of(observer: sa.Engine, table_name: str, key: str) -> None:
    """Make the server itself refuse an INSERT of the row under *key*, with a trigger."""
    dialect = observer.dialect.name
    with observer.begin() as conn:
        if dialect == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER {table_name}_boom BEFORE INSERT ON {table_name}"
                f" WHEN NEW.id_hash = '{key}' BEGIN SELECT RAISE(ABORT, 'boom'); END"
            )
        elif dialect == "postgresql":
            conn.exec_driver_sql(
                f"CREATE FUNCTION {table_name}_boom() RETURNS trigger LANGUAGE plpgsql AS"
                f" $$ BEGIN IF NEW.id_hash = '{key}' THEN RAISE EXCEPTION 'boom'; END IF;"
                " RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER {table_name}_boom BEFORE INSERT ON {table_name}"
                f" FOR EACH ROW EXECUTE FUNCTION {table_name}_boom()"
            )
        else:
            conn.exec_driver_sql(
                f"CREATE TRIGGER {table_name}_boom BEFORE INSERT ON {table_name}"
                f" FOR EACH ROW BEGIN IF NEW.id_hash = '{key}' THEN"
                " SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'boom'; END IF; END"
            )


# -- a failure between BEGIN and COMMIT ---------------------------------------------


def test_a_server_error_mid_regenerate_keeps_the_old_row_and_ends_the_transaction(
    sql_url: str, table_name: str, observer: sa.Engine
) -> None:
    """The old row survives, and the one pooled connection is back in autocommit after.

    Were the connection returned inside the failed transaction, the later single-statement
    save would run in it and never be seen by another connection.
    """
    store = SQLStore.from_url(sql_url, table_name=table_name, pool_size=1, max_overflow=0)
    try:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"old"), expected_version=None)
        _fail_inserts_of(observer, table_name, new)
        with pytest.raises(StoreError):
            store.save(new, make_record(b"new"), expected_version=None, replaces=old)
        with pytest.raises(StoreError):
            store.save(
                new, make_record(b"new"), expected_version=None, replaces=old, replaces_version=1
            )
        kept = store.load(old)
        assert kept is not None and kept.data == b"old"
        later = new_key()
        assert store.save(later, make_record(b"later"), expected_version=None)
        assert store.refresh(old, kept.expires_at + 60, kept.last_seen + 1)
        assert _committed(observer, store.table, later)
        assert _committed(observer, store.table, old)
        assert not _committed(observer, store.table, new)
    finally:
        store.close()


class _Interrupt(BaseException):
    """Like gevent's Timeout or KeyboardInterrupt: not an Exception."""


@pytest.mark.parametrize("error", [RuntimeError, _Interrupt])
def test_a_client_error_mid_regenerate_keeps_the_old_row_and_ends_the_transaction(
    sql_url: str, table_name: str, observer: sa.Engine, error: type[BaseException]
) -> None:
    """An exception raised in the application between the DELETE and the write."""
    store = SQLStore.from_url(sql_url, table_name=table_name, pool_size=1, max_overflow=0)
    try:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"old"), expected_version=None)
        armed = [True]

        def boom(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if armed[0] and statement.lstrip().upper().startswith("INSERT"):
                armed[0] = False
                raise error("boom")

        sa.event.listen(store.engine, "before_cursor_execute", boom)
        with pytest.raises(error):
            store.save(new, make_record(b"new"), expected_version=None, replaces=old)
        sa.event.remove(store.engine, "before_cursor_execute", boom)
        kept = store.load(old)
        assert kept is not None and kept.data == b"old"
        later = new_key()
        assert store.save(later, make_record(b"later"), expected_version=None)
        assert _committed(observer, store.table, later)
        assert _committed(observer, store.table, old)
        assert not _committed(observer, store.table, new)
    finally:
        store.close()


# -- a connection dropped inside a transaction --------------------------------------


def _proxied_store(sql_kind: str, proxy: TCPProxy, table_name: str) -> SQLStore:
    target = sa.make_url(server_url(sql_kind)).set(host="127.0.0.1", port=proxy.port)
    return SQLStore.from_url(target.render_as_string(hide_password=False), table_name=table_name)


def _proxy_for(sql_kind: str) -> TCPProxy:
    target = sa.make_url(server_url(sql_kind))
    default_port = {"postgresql": 5432, "mariadb": 3306}[sql_kind]
    return TCPProxy((target.host or "127.0.0.1", target.port or default_port))


@pytest.mark.parametrize("sql_kind", SQL_SERVER_KINDS)
@pytest.mark.parametrize("moment", ["after the DELETE", "at COMMIT"])
def test_a_drop_inside_a_regenerate_is_retried_whole(
    sql_kind: str, sql_url: str, table_name: str, observer: sa.Engine, moment: str
) -> None:
    """The server rolls the cut transaction back; the retry deletes and writes again."""
    with _proxy_for(sql_kind) as proxy:
        store = _proxied_store(sql_kind, proxy, table_name)
        try:
            old, new = new_key(), new_key()
            assert store.save(old, make_record(b"old"), expected_version=None)
            armed = [True]

            def cut(*args: Any) -> None:
                if not armed[0]:
                    return
                if moment == "after the DELETE" and not args[2].lstrip().startswith("DELETE"):
                    return
                armed[0] = False
                proxy.cut()
                proxy.restore()

            event = "after_cursor_execute" if moment == "after the DELETE" else "commit"
            sa.event.listen(store.engine, event, cut)
            assert store.save(
                new, make_record(b"new"), expected_version=None, replaces=old, replaces_version=1
            )
            assert not armed[0]
            sa.event.remove(store.engine, event, cut)
            assert store.load(old) is None
            loaded = store.load(new)
            assert loaded is not None and loaded.data == b"new"
            assert _committed(observer, store.table, new)
            assert not _committed(observer, store.table, old)
        finally:
            store.close()


class _ReplyDroppingProxy(TCPProxy):
    """A proxy that, once armed, lets the next request through but drops its reply.

    The server then has done the work (committed a transaction) while the client sees
    only a dropped connection, as when a network path dies at the wrong moment.
    """

    armed = False

    def forwards(self, data: bytes, from_target: bool) -> bool:
        if from_target and self.armed:
            self.armed = False
            return False
        return True


@pytest.mark.parametrize("sql_kind", SQL_SERVER_KINDS)
def test_a_regenerate_whose_commit_reply_is_lost_is_not_reported_as_failed(
    sql_kind: str, sql_url: str, table_name: str, observer: sa.Engine
) -> None:
    """A retried regenerate that already committed must not answer False.

    False tells the middleware that the old session was changed or ended by another
    request: it reloads the old key, finds it gone, and drops the session (a login that
    regenerates logs the user out), while the new row it did write is orphaned.
    Raising StoreError (outcome unknown) or answering True would both be honest.
    """
    target = sa.make_url(server_url(sql_kind))
    default_port = {"postgresql": 5432, "mariadb": 3306}[sql_kind]
    with _ReplyDroppingProxy((target.host or "127.0.0.1", target.port or default_port)) as proxy:
        store = _proxied_store(sql_kind, proxy, table_name)
        try:
            old, new = new_key(), new_key()
            assert store.save(old, make_record(b"old"), expected_version=None)

            def arm(conn: Any) -> None:
                proxy.armed = True

            sa.event.listen(store.engine, "commit", arm, once=True)
            try:
                saved: bool | None = store.save(
                    new,
                    make_record(b"new"),
                    expected_version=None,
                    replaces=old,
                    replaces_version=1,
                )
            except StoreError:
                saved = None
            assert _committed(observer, store.table, new)  # the first attempt landed
            assert saved is not False
        finally:
            store.close()


# -- engines the store did not build ------------------------------------------------------


@pytest.mark.parametrize("isolation_level", [None, "AUTOCOMMIT"], ids=["default", "autocommit"])
def test_a_ready_engine_keeps_a_failed_replacing_save_atomic(
    sql_url: str, table_name: str, observer: sa.Engine, isolation_level: str | None
) -> None:
    """An engine not built by the store opens transactions its own way, all the same.

    One built with isolation_level="AUTOCOMMIT" still gets a transaction: its
    conn.begin() alone opens nothing on the server, so without one the DELETE of the
    old row would commit at once and the failed create could not roll it back.
    """
    options = {} if isolation_level is None else {"isolation_level": isolation_level}
    engine = sa.create_engine(sql_url, **options)
    store = SQLStore(engine, table_name=table_name)
    try:
        old, new = new_key(), new_key()
        assert store.save(old, make_record(b"old"), expected_version=None)
        assert store.save(new, make_record(b"taken"), expected_version=None)
        # The old row is deleted first, then the create finds a live row and fails.
        assert not store.save(new, make_record(b"mine"), expected_version=None, replaces=old)
        kept = store.load(old)
        assert kept is not None and kept.data == b"old"
        assert store.save(new, make_record(b"v2", version=2), expected_version=1)
    finally:
        engine.dispose()


# -- the locked save -------------------------------------------------------------------


class _Refused(Exception):
    """What a build raises in these tests."""


@pytest.mark.parametrize(
    "error",
    [
        _Refused("too big"),
        _Interrupt("stop"),
        sa.exc.OperationalError("SELECT 1", {}, RuntimeError("boom")),
    ],
    ids=["exception", "base-exception", "sqlalchemy-error"],
)
def test_what_a_build_raises_comes_out_as_it_is_and_the_connection_comes_back_clean(
    sql_url: str, table_name: str, observer: sa.Engine, error: BaseException
) -> None:
    """Not translated, not retried (even a database error of the build's own), nothing
    written; the one pooled connection is out of the transaction, its lock released."""
    store = SQLStore.from_url(sql_url, table_name=table_name, pool_size=1, max_overflow=0)
    try:
        key, other = new_key(), new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)
        builds: list[Record] = []

        def build(current: Record) -> Record:
            builds.append(current)
            raise error

        with pytest.raises(type(error)) as info:
            store.save_locked(key, build, timeout=30, moves_to=other)
        assert info.value is error
        assert len(builds) == 1
        assert store.save(key, make_record(b"v2", version=2), expected_version=1)
        assert _committed(observer, store.table, key)
        assert not _committed(observer, store.table, other)
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"v2"
    finally:
        store.close()


def _written(current: Record) -> Record:
    return make_record(current.data + b"+", version=current.version + 1)


@pytest.mark.parametrize("sql_kind", SQL_SERVER_KINDS)
def test_a_locked_save_cut_mid_build_is_run_again_whole(
    sql_kind: str, sql_url: str, table_name: str, observer: sa.Engine
) -> None:
    """The server rolls the cut transaction back and frees the row; the store starts
    over, building again on what is stored."""
    with _proxy_for(sql_kind) as proxy:
        store = _proxied_store(sql_kind, proxy, table_name)
        try:
            key = new_key()
            assert store.save(key, make_record(b"v1"), expected_version=None)
            builds: list[Record] = []

            def build(current: Record) -> Record:
                builds.append(current)
                if len(builds) == 1:
                    proxy.cut()
                    proxy.restore()
                return _written(current)

            written = store.save_locked(key, build, timeout=30)
            assert [record.version for record in builds] == [1, 1]
            loaded = store.load(key)
            assert loaded is not None and loaded == written
            assert (loaded.data, loaded.version) == (b"v1+", 2)
        finally:
            store.close()


@pytest.mark.parametrize("sql_kind", SQL_SERVER_KINDS)
@pytest.mark.parametrize("move", ["in place", "moved", "moved, tombstone"])
def test_a_locked_save_whose_commit_reply_is_lost_returns_what_it_wrote(
    sql_kind: str, sql_url: str, table_name: str, observer: sa.Engine, move: str
) -> None:
    """The run again finds the first run's commit: it neither answers None (the session
    ended, to the middleware) nor builds and writes a second time."""
    target = sa.make_url(server_url(sql_kind))
    default_port = {"postgresql": 5432, "mariadb": 3306}[sql_kind]
    with _ReplyDroppingProxy((target.host or "127.0.0.1", target.port or default_port)) as proxy:
        store = _proxied_store(sql_kind, proxy, table_name)
        try:
            key = new_key()
            moves_to = None if move == "in place" else new_key()
            tombstone = make_tombstone() if move.endswith("tombstone") else None
            assert store.save(key, make_record(b"v1"), expected_version=None)
            builds: list[Record] = []

            def build(current: Record) -> Record:
                builds.append(current)
                return _written(current)

            def arm(conn: Any) -> None:
                proxy.armed = True

            sa.event.listen(store.engine, "commit", arm, once=True)
            written = store.save_locked(
                key, build, timeout=30, moves_to=moves_to, tombstone=tombstone
            )
            assert not proxy.armed, "no reply was dropped"
            assert len(builds) == 1
            assert written is not None
            assert store.load(moves_to or key) == written
            assert written.version == 2
            left = store.load(key)
            if moves_to is None:
                assert left == written
            elif tombstone is None:
                assert left is None
            else:
                assert left is not None and left.version == 0
        finally:
            store.close()


# -- a database that goes away ------------------------------------------------------------


@pytest.mark.parametrize("sql_kind", SQL_SERVER_KINDS)
def test_store_recovers_when_the_database_comes_back(sql_kind: str) -> None:
    """A lost database is a StoreError, and the same store works once it is back."""
    url = sa.make_url(server_url(sql_kind))
    default_port = {"postgresql": 5432, "mariadb": 3306}[sql_kind]
    with TCPProxy((url.host or "127.0.0.1", url.port or default_port)) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port)
        store = SQLStore.from_url(
            proxied.render_as_string(hide_password=False),
            table_name=f"test_sessions_{uuid.uuid4().hex[:12]}",
        )
        try:
            try:
                store.ping()
            except StoreError as exc:
                unreachable(server_url(sql_kind), exc)
            key = new_key()
            assert store.save(key, make_record(b"before"), expected_version=None)

            proxy.cut()
            for operation in (
                lambda: store.load(key),
                lambda: store.save(new_key(), make_record(), expected_version=None),
                lambda: store.refresh(key, time.time() + 60, time.time()),
                store.ping,
            ):
                with pytest.raises(StoreError) as info:
                    operation()
                assert isinstance(info.value.__cause__, sa.exc.SQLAlchemyError)

            proxy.restore()
            loaded = store.load(key)
            assert loaded is not None and loaded.data == b"before"
            assert store.save(key, make_record(b"after", version=2), expected_version=1)
        finally:
            proxy.restore()
            store.table.drop(store.engine, checkfirst=True)
            store.close()


# -- what a failure's message says ----------------------------------------------------------


def _password_url(sql_url: str, sql_kind: str) -> str:
    """*url* with a password on PostgreSQL, which the test server (trusting loopback) ignores."""
    if sql_kind != "postgresql":
        return sql_url
    return sa.make_url(sql_url).set(password="pw-s3cret").render_as_string(hide_password=False)


def _assert_quotes_none_of(message: str, *values: str) -> None:
    for value in values:
        assert value not in message, f"the message quotes {value[:12]!r}…: {message}"


def test_a_locked_move_onto_a_live_key_writes_nothing(sql_url: str, table_name: str) -> None:
    """As on Redis and memcached: the key is taken, so nothing moves and neither record
    changes. (It raised the database's duplicate-key error, which quotes the key.)"""
    store = SQLStore.from_url(sql_url, table_name=table_name)
    try:
        key, taken = new_key(), new_key()
        assert store.save(key, make_record(b"old"), expected_version=None)
        assert store.save(taken, make_record(b"taken"), expected_version=None)
        assert store.save_locked(key, _written, timeout=30, moves_to=taken) is None
        for name, data in ((key, b"old"), (taken, b"taken")):
            loaded = store.load(name)
            assert loaded is not None and loaded.data == data
    finally:
        store.table.drop(store.engine, checkfirst=True)
        store.close()


@pytest.mark.parametrize("sql_kind", SQL_SERVER_KINDS)
def test_a_failing_row_is_not_quoted(
    sql_url: str, sql_kind: str, table_name: str, observer: sa.Engine
) -> None:
    """A constraint of the operator's refuses a row: PostgreSQL's DETAIL quotes all of it
    ("Failing row contains (<key>, \\x…, …, <user id>)")."""
    store = SQLStore.from_url(_password_url(sql_url, sql_kind), table_name=table_name)
    try:
        key = new_key()
        data = b"topsecret-data"
        assert store.save(key, make_record(data, user_id="s3cret-user"), expected_version=None)
        with observer.begin() as conn:
            conn.exec_driver_sql(
                f"ALTER TABLE {table_name} ADD CONSTRAINT {table_name}_v CHECK (version < 2)"
            )
        with pytest.raises(StoreError) as info:
            store.save(
                key, make_record(data, version=2, user_id="s3cret-user"), expected_version=1
            )
        message = str(info.value)
        _assert_quotes_none_of(message, key, "topsecret", data.hex(), "s3cret", "pw-s3cret")
        assert "IntegrityError" in message or "OperationalError" in message
    finally:
        store.close()
