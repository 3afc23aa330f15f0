"""SQLStore beyond the conformance suite: table creation, options, outages, processes."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

# Documented in sys, underscore and all: the one way to see where another thread waits.
from sys import _current_frames
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import (
    SQL_KINDS,
    SQL_SERVER_KINDS,
    open_test_store,
    reachable_sql_url,
    server_url,
    unreachable,
)
from tests.helpers import body, counter, make_client, python_child
from tests.tcp_proxy import TCPProxy
from wsgisession.errors import ConfigError, StoreError
from wsgisession.ids import store_key
from wsgisession.stores import CorruptRecord, LockTimeout, Record, open_store
from wsgisession.stores.sql import SQLStore
from wsgisession.testing import make_record, new_key
from wsgisession.users import MAX_USER_ID


@pytest.fixture(params=SQL_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Narrow conftest's ``store`` fixture to the SQL stores."""
    kind: str = request.param
    return kind


@pytest.fixture
def sql_url(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a reachable database of the kind under test."""
    return reachable_sql_url(store_kind, request, tmp_path)


OpenSQL = Callable[..., SQLStore]


@pytest.fixture
def open_sql(sql_url: str) -> Iterator[OpenSQL]:
    """Open SQLStores on one table no other test uses; drop it and close them after."""
    table_name = f"test_sessions_{uuid.uuid4().hex[:12]}"
    stores: list[SQLStore] = []

    def open_(**options: Any) -> SQLStore:
        store = SQLStore.from_url(sql_url, **{"table_name": table_name, **options})
        stores.append(store)
        return store

    try:
        yield open_
    finally:
        if stores:
            stores[0].table.drop(stores[0].engine, checkfirst=True)
        for store in stores:
            store.close()


@pytest.fixture
def batch_store(
    store_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[SQLStore]:
    """A fresh store that cleans up ten rows per batch."""
    for store in open_test_store(store_kind, request, tmp_path, cleanup_batch=10):
        assert isinstance(store, SQLStore)
        yield store


def _run_threads(count: int, target: Callable[[int], None]) -> None:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait()
            target(n)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


# -- the table -----------------------------------------------------------------


def test_building_the_store_creates_nothing(open_sql: OpenSQL) -> None:
    store = open_sql()
    assert not sa.inspect(store.engine).has_table(store.table.name)


def test_first_operation_creates_the_missing_table(open_sql: OpenSQL) -> None:
    store = open_sql()
    assert store.load(new_key()) is None
    inspector = sa.inspect(store.engine)
    assert inspector.has_table(store.table.name)
    indexed = {tuple(index["column_names"]) for index in inspector.get_indexes(store.table.name)}
    assert {("expires_at",), ("user_id",)} <= indexed


def test_binary_columns_hold_large_values(open_sql: OpenSQL) -> None:
    store = open_sql()
    store.ping()
    columns = {c["name"]: c for c in sa.inspect(store.engine).get_columns(store.table.name)}
    kinds = {str(columns[name]["type"]).upper() for name in ("data", "meta")}
    expected = {
        "mariadb": {"LONGBLOB"},
        "mysql": {"LONGBLOB"},
        "postgresql": {"BYTEA"},
        "sqlite": {"BLOB"},
    }
    assert kinds == expected[store.engine.dialect.name]


def test_a_second_store_uses_the_existing_table(open_sql: OpenSQL) -> None:
    first = open_sql()
    key = new_key()
    assert first.save(key, make_record(b"kept"), expected_version=None)
    second = open_sql()
    second.ping()
    loaded = second.load(key)
    assert loaded is not None and loaded.data == b"kept"


def test_stores_racing_to_create_the_table_all_succeed(open_sql: OpenSQL) -> None:
    """Workers starting at once all find the table missing; none may fail."""
    stores = [open_sql() for _ in range(6)]
    keys = [new_key() for _ in stores]

    def start(n: int) -> None:
        assert stores[n].save(keys[n], make_record(str(n).encode()), expected_version=None)

    _run_threads(len(stores), start)
    for n, key in enumerate(keys):
        loaded = stores[0].load(key)
        assert loaded is not None and loaded.data == str(n).encode()


def test_five_megabytes_round_trip(open_sql: OpenSQL) -> None:
    store = open_sql()
    key = new_key()
    data = os.urandom(5 << 20)
    assert store.save(key, make_record(data, meta=data[:1000]), expected_version=None)
    loaded = store.load(key)
    assert loaded is not None
    assert loaded.data == data and loaded.meta == data[:1000]


def test_a_ready_engine_can_be_passed(sql_url: str) -> None:
    engine = sa.create_engine(sql_url)
    store = SQLStore(engine, table_name=f"test_sessions_{uuid.uuid4().hex[:12]}")
    try:
        key = new_key()
        assert store.save(key, make_record(b"mine"), expected_version=None)
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"mine"
        store.close()
        # The engine is the caller's: closing the store leaves it usable.
        assert store.count() == 1
    finally:
        store.table.drop(engine, checkfirst=True)
        engine.dispose()


# -- the SQLite file -------------------------------------------------------------------


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mode & 0o777 for path in directory.iterdir()}


@pytest.mark.parametrize(
    "mask", [0o000, 0o022, 0o277], ids=["umask-000", "umask-022", "umask-277"]
)
def test_a_new_sqlite_file_and_its_wal_are_the_owners_alone(tmp_path: Path, mask: int) -> None:
    """SQLite would create the file 0644 whatever the umask, and give -wal and -shm its mode."""
    with _umask(mask), SQLStore.from_url(f"sqlite:///{tmp_path / 's.db'}") as store:
        assert store.save(new_key(), make_record(b"private"), expected_version=None)
        # The connection is still open, so the -wal and -shm files are there.
        assert _modes(tmp_path) == {"s.db": 0o600, "s.db-wal": 0o600, "s.db-shm": 0o600}


def test_an_existing_sqlite_file_keeps_the_mode_its_owner_chose(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.touch()
    path.chmod(0o640)
    with _umask(0o022), SQLStore.from_url(f"sqlite:///{path}") as store:
        assert store.save(new_key(), make_record(b"shared"), expected_version=None)
        assert _modes(tmp_path) == {"s.db": 0o640, "s.db-wal": 0o640, "s.db-shm": 0o640}


def test_a_uri_sqlite_url_creates_the_file_it_names_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///file:{tmp_path / 'a%20b.db'}?mode=rwc&uri=true"
    with _umask(0o022), SQLStore.from_url(url) as store:
        store.ping()
        assert _modes(tmp_path)["a b.db"] == 0o600
    read_only = f"sqlite:///file:{tmp_path / 'missing.db'}?mode=ro&uri=true"
    with SQLStore.from_url(read_only) as store, pytest.raises(StoreError):
        store.ping()
    assert sorted(_modes(tmp_path)) == ["a b.db"]  # SQLite removed its -wal and -shm


# -- user ids --------------------------------------------------------------------------


def test_a_user_id_of_the_longest_length_fits_the_column(open_sql: OpenSQL) -> None:
    """MAX_USER_ID characters, four of them multi-byte in UTF-8, on every database."""
    user = ("é😀жa" * MAX_USER_ID)[:MAX_USER_ID]
    store = open_sql()
    key = new_key()
    assert store.save(key, make_record(b"{}", user_id=user), expected_version=None)
    loaded = store.load(key)
    assert loaded is not None and loaded.user_id == user
    assert [found for found, _ in store.user_records(user)] == [key]
    assert store.user_records(user[:-1]) == []
    columns = {c["name"]: c for c in sa.inspect(store.engine).get_columns(store.table.name)}
    assert columns["user_id"]["type"].length == MAX_USER_ID


# -- rows that can't be read ------------------------------------------------------------


def _spoil(path: Path, key: str, assignment: str) -> None:
    """Set a column of the row under *key* to a value of another type, as only SQLite,
    whose columns take any value, allows."""
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE sessions SET {assignment} WHERE id_hash = ?", (key,))
    db.close()


@pytest.mark.parametrize(
    ("assignment", "column"),
    [
        pytest.param("version = 'topsecret'", "version", id="text-version"),
        pytest.param("data = 'topsecret text'", "data", id="text-data"),
        # bytes(4096) is 4096 zero bytes: a huge number asked for as much memory.
        pytest.param("data = 4096", "data", id="int-data"),
        pytest.param("meta = 2.5", "meta", id="real-meta"),
        # A text column turns an int into text, but keeps a blob.
        pytest.param("user_id = x'616e6e'", "user_id", id="blob-user"),
        # Text sorts after every number in SQLite: the row is live forever.
        pytest.param("expires_at = 'topsecret'", "expires_at", id="text-expiry"),
    ],
)
def test_a_row_of_the_wrong_types_is_a_corrupt_record(
    tmp_path: Path, assignment: str, column: str
) -> None:
    """load() raises CorruptRecord naming the column, never its value; every other
    operation sees no row there. Each used to fail with the conversion's TypeError or
    ValueError (quoting the value), or to read an int as that many zero bytes."""
    with SQLStore.from_url(f"sqlite:///{tmp_path / 's.db'}") as store:
        bad, good = new_key(), new_key()
        for key in (bad, good):
            assert store.save(key, make_record(b"{}", user_id="ann"), expected_version=None)
        _spoil(tmp_path / "s.db", bad, assignment)
        with pytest.raises(CorruptRecord, match=column) as info:
            store.load(bad)
        assert "topsecret" not in str(info.value) and "4096" not in str(info.value)
        assert [key for key, _ in store.user_records("ann")] == [good]
        assert store.save_locked(bad, _never_build, timeout=_PATIENCE) is None
        assert store.count() in (1, 2)
        store.cleanup()
        assert store.load(good) is not None


def test_a_corrupt_row_is_counted_and_replaced_by_the_middleware(tmp_path: Path) -> None:
    store = SQLStore.from_url(f"sqlite:///{tmp_path / 's.db'}")
    client, middleware = make_client({"/inc": counter}, store=store)
    try:
        assert body(client.get("/inc")) == 1
        cookie = client.get_cookie("session_id")
        assert cookie is not None
        key = store_key(cookie.value.rsplit(".", 1)[0])
        _spoil(tmp_path / "s.db", key, "version = 'x'")
        assert body(client.get("/inc")) == 1
        assert middleware.metrics()["corrupt"] == 1
    finally:
        store.close()


# -- expiry, cleanup, counting, the purge lease ----------------------------------


def test_expiry_is_judged_by_the_application_clock(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    assert store.save(key, make_record(b"live", ttl=60), expected_version=None)
    assert store.load(key) is not None
    later = time.time() + 120
    monkeypatch.setattr("wsgisession._clock.now", lambda: later)
    assert store.load(key) is None
    assert not store.refresh(key, later + 60, later)
    assert not store.save(key, make_record(b"v2", version=2), expected_version=1)
    assert store.count() == 0
    assert store.cleanup() == 1


def test_cleanup_deletes_in_batches(batch_store: SQLStore) -> None:
    store = batch_store
    live = [new_key() for _ in range(5)]
    for key in live:
        assert store.save(key, make_record(b"live"), expected_version=None)
    for _ in range(35):
        assert store.save(new_key(), make_record(b"dead", ttl=-5), expected_version=None)
    deletes: list[str] = []

    def spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", spy)
    try:
        assert store.cleanup() == 35
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", spy)
    assert len(deletes) == 4
    assert store.count() == 5
    for key in live:
        assert store.load(key) is not None
    assert store.cleanup() == 0


def test_cleanup_stops_at_its_limit(batch_store: SQLStore) -> None:
    store = batch_store
    for _ in range(30):
        assert store.save(new_key(), make_record(ttl=-5), expected_version=None)
    assert store.cleanup(limit=12) == 12
    assert store.cleanup(limit=0) == 0
    assert store.cleanup() == 18


def test_claim_purge_is_granted_once_per_interval(store: SQLStore) -> None:
    assert store.claim_purge(60)
    assert not store.claim_purge(60)


def test_only_one_of_two_workers_gets_the_purge(open_sql: OpenSQL) -> None:
    first, second = open_sql(), open_sql()
    assert [first.claim_purge(60), second.claim_purge(60)] == [True, False]


def test_one_of_many_racing_workers_gets_the_purge(open_sql: OpenSQL) -> None:
    stores = [open_sql() for _ in range(8)]
    for store in stores:
        store.ping()
    granted: list[int] = []

    def claim(n: int) -> None:
        if stores[n].claim_purge(60):
            granted.append(n)

    _run_threads(len(stores), claim)
    assert len(granted) == 1


def test_the_purge_lease_is_not_a_session(store: SQLStore) -> None:
    assert store.claim_purge(0)
    assert store.count() == 0
    assert store.cleanup() == 0
    # An expired lease is free again.
    assert store.claim_purge(60)
    assert store.count() == 0


# -- what the request path sends ---------------------------------------------------

# The statement that opens a transaction of several statements, where the store sends
# one itself (an engine in autocommit); MariaDB's driver opens its own.
_OPENED_BY = {"sqlite": "BEGIN IMMEDIATE", "postgresql": "BEGIN", "mariadb": None}


class _Sent:
    """The statements and commits an engine sends, seen through SQLAlchemy's events."""

    def __init__(self, engine: sa.Engine) -> None:
        self.statements: list[str] = []
        self.commits = 0
        sa.event.listen(engine, "before_cursor_execute", self._statement)
        sa.event.listen(engine, "commit", self._commit)

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(" ".join(statement.split()))

    def _commit(self, conn: Any) -> None:
        self.commits += 1


def test_a_load_sends_one_select_and_commits_nothing(open_sql: OpenSQL) -> None:
    store = open_sql()
    key = new_key()
    assert store.save(key, make_record(b"x"), expected_version=None)
    sent = _Sent(store.engine)
    assert store.load(key) is not None
    assert store.load(new_key()) is None
    assert [statement.split()[0] for statement in sent.statements] == ["SELECT", "SELECT"]
    assert sent.commits == 0


def test_one_statement_writes_open_no_transaction(open_sql: OpenSQL) -> None:
    store = open_sql()
    store.ping()  # creates the table
    sent = _Sent(store.engine)
    key = new_key()
    assert store.save(key, make_record(b"v1"), expected_version=None)
    assert store.save(key, make_record(b"v2", version=2), expected_version=1)
    assert store.refresh(key, time.time() + 7200, time.time())
    assert [statement.split()[0] for statement in sent.statements] == [
        "INSERT",
        "UPDATE",
        "UPDATE",
    ]


def test_a_save_that_replaces_a_key_opens_its_transaction(
    store_kind: str, open_sql: OpenSQL
) -> None:
    store = open_sql()
    old, new = new_key(), new_key()
    assert store.save(old, make_record(b"old"), expected_version=None)
    sent = _Sent(store.engine)
    assert store.save(new, make_record(b"new"), expected_version=None, replaces=old)
    begin = _OPENED_BY[store_kind]
    if begin is not None:
        assert sent.statements[0] == begin
    assert not any(statement.startswith("BEGIN") for statement in sent.statements[1:])
    assert sent.commits == 1
    assert store.load(old) is None


def test_a_ready_engine_keeps_a_failed_replacing_save_atomic(sql_url: str) -> None:
    """An engine not built by the store opens transactions its own way, all the same."""
    engine = sa.create_engine(sql_url)
    store = SQLStore(engine, table_name=f"test_sessions_{uuid.uuid4().hex[:12]}")
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
        store.table.drop(engine, checkfirst=True)
        engine.dispose()


def _ping(stores: list[SQLStore], n: int) -> None:
    stores[n].ping()


def test_connections_opening_a_new_sqlite_file_together_all_succeed(tmp_path: Path) -> None:
    """Switching a new file to WAL fails at once while another connection holds a lock."""
    for n in range(10):
        stores = [SQLStore.from_url(f"sqlite:///{tmp_path / f'new{n}.db'}") for _ in range(6)]
        try:
            _run_threads(len(stores), partial(_ping, stores))
        finally:
            for store in stores:
                store.close()
        with sqlite3.connect(tmp_path / f"new{n}.db") as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.close()


# -- options and URLs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"pool_sise": 5}, "pool_sise", id="unknown"),
        pytest.param({"pool_size": "5"}, "pool_size", id="pool_size-str"),
        pytest.param({"pool_size": True}, "pool_size", id="pool_size-bool"),
        pytest.param({"pool_size": -1}, "pool_size", id="pool_size-negative"),
        pytest.param({"max_overflow": 1.5}, "max_overflow", id="max_overflow-float"),
        pytest.param({"pool_recycle": "1h"}, "pool_recycle", id="pool_recycle-str"),
        pytest.param({"pool_pre_ping": 1}, "pool_pre_ping", id="pool_pre_ping-int"),
        pytest.param({"pool_timeout": None}, "pool_timeout", id="pool_timeout-none"),
        pytest.param({"connect_args": [("timeout", 1)]}, "connect_args", id="connect_args-list"),
        pytest.param({"cleanup_batch": 0}, "cleanup_batch", id="cleanup_batch-zero"),
        pytest.param({"cleanup_batch": "10"}, "cleanup_batch", id="cleanup_batch-str"),
        pytest.param({"echo": "yes"}, "echo", id="echo-str"),
        pytest.param({"table_name": "my sessions"}, "table_name", id="table-space"),
        pytest.param({"table_name": "1sessions"}, "table_name", id="table-digit"),
        pytest.param({"table_name": "s; DROP TABLE x"}, "table_name", id="table-injection"),
        pytest.param({"table_name": "s" * 49}, "table_name", id="table-too-long"),
        pytest.param({"table_name": 7}, "table_name", id="table-int"),
    ],
)
def test_bad_options_raise_config_error(
    options: dict[str, Any], named: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=named):
        open_store(f"sqlite:///{tmp_path / 'x.db'}", **options)


def test_good_options_are_accepted(tmp_path: Path) -> None:
    with open_store(
        f"sqlite:///{tmp_path / 'x.db'}",
        table_name="web_sessions",
        pool_size=3,
        max_overflow=2,
        pool_recycle=1800,
        pool_pre_ping=True,
        pool_timeout=2.5,
        connect_args={"timeout": 10},
        cleanup_batch=50,
        echo=False,
    ) as store:
        assert isinstance(store, SQLStore)
        assert store.table.name == "web_sessions"
        assert store.cleanup_batch == 50
        store.ping()


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        pytest.param("nosuchdb://localhost/db", "wsgisession[sql]", id="dialect"),
        pytest.param("postgresql+nosuchdriver://u@h/db", "wsgisession[postgres]", id="pg"),
        pytest.param("mysql+nosuchdriver://u@h/db", "wsgisession[mysql]", id="mysql"),
        pytest.param("mariadb+nosuchdriver://u@h/db", "wsgisession[mysql]", id="mariadb"),
    ],
)
def test_a_missing_dialect_or_driver_names_the_extra(url: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"pip install '{hint}'")):
        SQLStore.from_url(url)


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        pytest.param("not a url", "not a url", id="words"),
        pytest.param("postgresql+psycopg://u:secretpw@h:port/db", "secretpw", id="port"),
        # SQLAlchemy reads "w0rd@h:5432" as the port, and its complaint quotes it.
        pytest.param("postgresql+psycopg://u:p@ss:w0rd@h:5432/db", "w0rd", id="at-and-colon"),
    ],
)
def test_an_unreadable_url_raises_config_error(url: str, secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        SQLStore.from_url(url)
    assert secret not in str(info.value)
    assert "percent-encode" in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true"],
)
def test_in_memory_sqlite_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="in-memory"):
        SQLStore.from_url(url)


def test_a_url_is_not_an_engine() -> None:
    with pytest.raises(ConfigError, match="from_url"):
        SQLStore("sqlite:///x.db")  # type: ignore[arg-type]


def test_an_asyncio_driver_is_refused() -> None:
    with pytest.raises(ConfigError, match="asyncio"):
        SQLStore.from_url("postgresql+psycopg_async://u@127.0.0.1/db")


def test_postgres_scheme_is_read_as_postgresql() -> None:
    with open_store("postgres://u@127.0.0.1:1/db") as store:
        assert isinstance(store, SQLStore)
        assert store.engine.dialect.name == "postgresql"


def test_passwords_never_appear_in_errors() -> None:
    """Building never connects; the failure on first use names the URL, masked."""
    with SQLStore.from_url("postgresql+psycopg://postgres:secretpw@127.0.0.1:1/test") as store:
        with pytest.raises(StoreError) as info:
            store.ping()
    assert "secretpw" not in str(info.value)
    assert "***" in str(info.value)
    assert isinstance(info.value.__cause__, sa.exc.SQLAlchemyError)


def test_echo_logs_statements_but_no_parameters(
    store_kind: str, sql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The ``echo`` option logs every statement; never the password, a key or a record."""
    url = sa.make_url(sql_url)
    if store_kind == "postgresql":
        url = url.set(password=_PASSWORD)  # the test server trusts loopback
    caplog.set_level(logging.DEBUG)
    store = SQLStore.from_url(
        url.render_as_string(hide_password=False),
        table_name=f"test_sessions_{uuid.uuid4().hex[:12]}",
        echo=True,
    )
    try:
        key = new_key()
        record = make_record(b"topsecret-data", user_id="s3cret-user")
        assert store.save(key, record, expected_version=None)
        assert store.load(key) == record
        assert store.user_records("s3cret-user") != []
    finally:
        store.table.drop(store.engine, checkfirst=True)
        store.close()
    logged = "\n".join(entry.getMessage() for entry in caplog.records)
    assert "INSERT" in logged
    for secret in ("s3cr", _ENCODED, key, "topsecret", b"topsecret".hex(), "s3cret-user"):
        assert secret not in logged


@pytest.mark.parametrize("store_kind", SQL_SERVER_KINDS)
def test_session_data_never_appears_in_errors(sql_url: str) -> None:
    """Even on an engine built without hide_parameters, errors don't carry the data."""
    engine = sa.create_engine(sql_url)
    store = SQLStore(engine, table_name=f"test_sessions_{uuid.uuid4().hex[:12]}")
    try:
        too_long = make_record(b"topsecret-data", user_id="u" * 300)
        with pytest.raises(StoreError) as info:
            store.save(new_key(), too_long, expected_version=None)
        assert "topsecret" not in str(info.value)
        assert isinstance(info.value.__cause__, sa.exc.DBAPIError)
    finally:
        store.table.drop(engine, checkfirst=True)
        engine.dispose()


# A password the test servers never check (PostgreSQL trusts loopback), holding what
# a URL must percent-encode.
_PASSWORD = "s3cr@t:p/w"
_ENCODED = "s3cr%40t%3Ap%2Fw"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(
            f"postgresql+psycopg://postgres:{_ENCODED}@127.0.0.1:5432/test",
            "postgresql+psycopg://postgres:***@127.0.0.1:5432/test",
            id="postgresql",
        ),
        pytest.param(
            f"mariadb+pymysql://root:{_ENCODED}@127.0.0.1:3306/test",
            "mariadb+pymysql://root:***@127.0.0.1:3306/test",
            id="mariadb",
        ),
        pytest.param(
            f"postgresql+psycopg://postgres@127.0.0.1/test?password={_ENCODED}",
            "postgresql+psycopg://postgres@127.0.0.1/test?password=***",
            id="query",
        ),
    ],
)
def test_the_repr_shows_the_store_with_its_password_masked(url: str, shown: str) -> None:
    with SQLStore.from_url(url, table_name="web_sessions") as store:
        assert repr(store) == f"<SQLStore web_sessions at {shown}>"


@pytest.mark.parametrize("password", ["s3cr@t", _PASSWORD])
@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mariadb+pymysql"])
def test_a_password_with_a_raw_at_sign_is_refused_unquoted(scheme: str, password: str) -> None:
    """SQLAlchemy cuts the password at its "@" and reads the rest as the host, which the
    driver's connection error then quoted ("failed to resolve host 't@127.0.0.1'"), or
    as the port, which its own complaint quoted."""
    url = f"{scheme}://user:{password}@127.0.0.1/test"
    with pytest.raises(ConfigError, match="percent-encode") as info:
        SQLStore.from_url(url)
    messages = [str(info.value)]
    if password == "s3cr@t":
        with pytest.raises(ConfigError, match="%40") as ready:
            SQLStore(sa.create_engine(url))
        messages.append(str(ready.value))
    for message in messages:
        assert "s3cr" not in message and "t@" not in message and "p/w" not in message


def test_a_password_parameter_is_masked_when_an_asyncio_driver_is_refused() -> None:
    with pytest.raises(ConfigError, match="asyncio") as info:
        SQLStore.from_url(f"postgresql+psycopg_async://u@127.0.0.1/db?password={_ENCODED}")
    assert "s3cr" not in str(info.value)
    assert "password=***" in str(info.value)


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_a_percent_encoded_password_works_and_stays_masked(store_kind: str, sql_url: str) -> None:
    """Every message of a working store on a password URL: a failed statement's too."""
    url = sa.make_url(sql_url).set(password=_PASSWORD).render_as_string(hide_password=False)
    assert _ENCODED in url
    store = SQLStore.from_url(url, table_name=f"test_sessions_{uuid.uuid4().hex[:12]}")
    try:
        key = new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)
        with pytest.raises(StoreError) as info:
            store.save(
                new_key(),
                make_record(b"{}", user_id="u" * (MAX_USER_ID + 1)),
                expected_version=None,
            )
        messages = [repr(store), str(info.value)]
        with _locked_elsewhere(store, key), pytest.raises(LockTimeout) as timeout:
            store.save_locked(key, _never_build, timeout=0.1)
        messages.append(str(timeout.value))
        for message in messages:
            assert "s3cr" not in message and _ENCODED not in message
            assert "postgres:***@" in message
    finally:
        store.table.drop(store.engine, checkfirst=True)
        store.close()


@pytest.mark.parametrize("store_kind", ["mariadb"])
def test_a_refused_password_stays_masked(store_kind: str, sql_url: str) -> None:
    """The test server's root has no password, so any password is refused."""
    url = sa.make_url(sql_url).set(password=_PASSWORD).render_as_string(hide_password=False)
    with SQLStore.from_url(url) as store, pytest.raises(StoreError) as info:
        store.ping()
    message = str(info.value)
    assert "s3cr" not in message and _ENCODED not in message
    assert ":***@" in message and "1045" in message


@pytest.mark.parametrize(
    ("url", "connect_args", "secret"),
    [
        pytest.param("sqlite:///x.db", {"password": 123456}, "123456", id="sqlite"),
        pytest.param(
            "mariadb+pymysql://u@127.0.0.1/db", {"passwd": 123456}, "123456", id="mariadb"
        ),
        pytest.param(
            "postgresql+psycopg://u@127.0.0.1/db", {"sslpassword": 1234}, "1234", id="postgresql"
        ),
        pytest.param(
            "mariadb+pymysql://u@127.0.0.1/db", {"client_flag": "12x45"}, "12x45", id="flag"
        ),
    ],
)
def test_a_bad_connect_args_entry_is_named_and_never_quoted(
    url: str, connect_args: dict[str, Any], secret: str
) -> None:
    """A numeric password (as a configuration file reads 123456) would fail on first use,
    on PyMySQL with a bare TypeError; a flag that is no number raised a bare ValueError
    that quoted it."""
    with pytest.raises(ConfigError) as info:
        SQLStore.from_url(url, connect_args=connect_args)
    message = str(info.value)
    assert "'connect_args'" in message and repr(next(iter(connect_args))) in message
    assert secret not in message


def test_a_driver_refusing_an_argument_is_a_store_error_that_quotes_nothing(
    tmp_path: Path,
) -> None:
    """The driver's TypeError used to escape the store as it was."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with SQLStore.from_url(url, connect_args={"s3cr3t_option": 1}) as store:
        with pytest.raises(StoreError, match="'connect_args'") as info:
            store.ping()
    assert "s3cr3t" not in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)


@pytest.mark.parametrize("store_kind", SQL_SERVER_KINDS)
def test_a_custom_mysql_client_flag_keeps_found_rows(store_kind: str, open_sql: OpenSQL) -> None:
    """A refresh that changes nothing must still count its row, or it looks gone."""
    options: dict[str, Any] = {}
    if store_kind == "mariadb":
        options["connect_args"] = {"client_flag": 0}
    store = open_sql(**options)
    key = new_key()
    record = make_record(ttl=600)
    assert store.save(key, record, expected_version=None)
    assert store.refresh(key, record.expires_at, record.last_seen)
    assert store.refresh(key, record.expires_at - 60, record.last_seen - 60)


# -- outages -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SQL_SERVER_KINDS)
def test_store_recovers_when_the_database_comes_back(kind: str) -> None:
    """A lost database is a StoreError, and the same store works once it is back."""
    url = sa.make_url(server_url(kind))
    default_port = {"postgresql": 5432, "mariadb": 3306}[kind]
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
                unreachable(server_url(kind), exc)
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


# -- SQLite from several processes ---------------------------------------------------

_MERGER = """
import json, sys
from wsgisession.stores.sql import SQLStore
from wsgisession.testing import make_record

url, key, name, writes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with SQLStore.from_url(url) as store:
    for i in range(writes):
        while True:
            current = store.load(key)
            data = json.loads(current.data)
            data[name] = i
            new = make_record(json.dumps(data).encode(), version=current.version + 1)
            if store.save(key, new, expected_version=current.version):
                break
"""

_SAVER = """
import sys
from wsgisession.stores.sql import SQLStore
from wsgisession.testing import make_record

url, key = sys.argv[1], sys.argv[2]
with SQLStore.from_url(url) as store:
    current = store.load(key)
    print("ready", flush=True)
    while True:
        version = current.version + 1
        new = make_record(b"state-%d" % version, version=version)
        if store.save(key, new, expected_version=current.version):
            current = new
        else:
            current = store.load(key)
"""


def _sqlite_store(tmp_path: Path) -> SQLStore:
    return SQLStore.from_url(f"sqlite:///{tmp_path / 'shared.db'}")


def test_sqlite_processes_merging_one_session_lose_nothing(tmp_path: Path) -> None:
    with _sqlite_store(tmp_path) as store:
        key = new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)
        url = str(store.engine.url)
        processes, writes = 4, 25
        children = [
            subprocess.Popen([sys.executable, "-c", _MERGER, url, key, f"p{n}", str(writes)])
            for n in range(processes)
        ]
        for child in children:
            assert child.wait(timeout=120) == 0
        loaded = store.load(key)
        assert loaded is not None
        assert json.loads(loaded.data) == {f"p{n}": writes - 1 for n in range(processes)}
        assert loaded.version == 1 + processes * writes


def test_sqlite_survives_a_writer_killed_mid_save(tmp_path: Path) -> None:
    """SIGKILL at a random moment leaves the old record or the new, never a broken one."""
    with _sqlite_store(tmp_path) as store:
        key = new_key()
        assert store.save(key, make_record(b"state-1"), expected_version=None)
        url = str(store.engine.url)
        seen = 1
        for _ in range(15):
            with subprocess.Popen(
                [sys.executable, "-c", _SAVER, url, key], stdout=subprocess.PIPE
            ) as child:
                assert child.stdout is not None
                assert child.stdout.readline() == b"ready\n"
                time.sleep(random.uniform(0.005, 0.05))
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=30)
            loaded = store.load(key)
            assert loaded is not None
            assert loaded.data == b"state-%d" % loaded.version
            assert loaded.version >= seen
            seen = loaded.version
        assert seen > 1
    with sqlite3.connect(tmp_path / "shared.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


# -- the locked save -------------------------------------------------------------------

#: How long a test waits for another thread or process to get somewhere: a bound that
#: only a broken store reaches.
_PATIENCE = 30.0


def _bump(name: str) -> Callable[[Record], Record]:
    """A build that adds ``name: True`` to the session's JSON data."""

    def build(current: Record) -> Record:
        data = json.loads(current.data)
        data[name] = True
        return make_record(json.dumps(data).encode(), version=current.version + 1)

    return build


def _never_build(current: Record) -> Record:
    raise AssertionError("built without holding the lock")


def _in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Start *target* in a thread; the list receives what it returned or raised."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:  # handed to the test, which asserts on it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _wait_for_waiters(
    store: SQLStore, threads: list[threading.Thread], count: int, what: str
) -> None:
    """Poll until *count* statements wait for a lock (see :func:`_lock_waiters`)."""
    deadline = time.monotonic() + _PATIENCE
    while _lock_waiters(store, threads) != count:
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        # InnoDB refreshes what INNODB_TRX shows only when it was last read more
        # than 0.1 s ago, so faster polling would keep showing the same snapshot.
        time.sleep(0.15)


def _parked(thread: threading.Thread) -> bool:
    """Whether *thread* is blocked in a ``threading`` wait, as in the SQLite write queue."""
    frame = _current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == "wait" and frame.f_code.co_filename == threading.__file__:
            return True
        frame = frame.f_back
    return False


def _lock_waiters(store: SQLStore, threads: list[threading.Thread]) -> int:
    """How many of the store's statements wait for a lock, as the database sees them.

    On SQLite the wait of this process's *threads* is in the store's own queue.
    """
    dialect = store.engine.dialect.name
    if dialect == "sqlite":
        return sum(_parked(thread) for thread in threads)
    if dialect == "postgresql":
        query = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE :pattern"
        )
    else:
        query = (
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX"
            " WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE :pattern"
        )
    with store.engine.connect() as conn:
        found = conn.execute(sa.text(query), {"pattern": f"%{store.table.name}%"}).scalar_one()
    return int(found)


@contextmanager
def _locked_elsewhere(store: SQLStore, key: str) -> Iterator[None]:
    """Hold the lock of the row under *key* from a connection outside the store.

    On SQLite that is the database's write lock, as another process would hold it.
    """
    if store.engine.dialect.name == "sqlite":
        db = sqlite3.connect(store.engine.url.database or "", isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield
            db.execute("ROLLBACK")
        finally:
            db.close()
        return
    engine = sa.create_engine(store.engine.url)
    table = store.table
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(
                sa.select(table.c.version).where(table.c.id_hash == key).with_for_update()
            ).all()
            yield
    finally:
        engine.dispose()


def _lock_wait_setting(store: SQLStore) -> object:
    """The lock wait setting of the connection the store's one-connection pool holds."""
    query = {
        "sqlite": "PRAGMA busy_timeout",
        "postgresql": "SHOW lock_timeout",
    }.get(store.engine.dialect.name, "SELECT @@SESSION.innodb_lock_wait_timeout")
    with store.engine.connect() as conn:
        return conn.exec_driver_sql(query).scalar_one()


def test_locked_saves_take_the_lock_first_come_first_served(store: SQLStore) -> None:
    """Each waits in the database's queue (this process's, on SQLite) in arrival order."""
    key = new_key()
    assert store.save(key, make_record(b"{}"), expected_version=None)
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def save(name: str) -> Record | None:
        def build(current: Record) -> Record:
            order.append(name)
            if name == "holder":
                holding.set()
                release.wait(_PATIENCE)
            return _bump(name)(current)

        return store.save_locked(key, build, timeout=_PATIENCE)

    started = [_in_thread(partial(save, "holder"))]
    try:
        assert holding.wait(_PATIENCE), "the first locked save never built"
        for n, name in enumerate(["first", "second", "third"], start=1):
            started.append(_in_thread(partial(save, name)))
            waiting = [thread for thread, _ in started[1:]]
            _wait_for_waiters(store, waiting, n, f"{name} to queue")
    finally:
        release.set()
        for thread, _ in started:
            thread.join(_PATIENCE)
    assert all(isinstance(outcome[0], Record) for _, outcome in started), started
    assert order == ["holder", "first", "second", "third"]
    loaded = store.load(key)
    assert loaded is not None and loaded.version == 5
    assert json.loads(loaded.data) == dict.fromkeys(["holder", "first", "second", "third"], True)


def test_a_plain_save_waits_for_a_locked_save_then_loses(store: SQLStore) -> None:
    """It queues behind the lock instead of failing at once, and its version is stale."""
    key = new_key()
    assert store.save(key, make_record(b"{}"), expected_version=None)
    rival: list[tuple[threading.Thread, list[object]]] = []

    def build(current: Record) -> Record:
        stale = make_record(b'{"rival": true}', version=2)
        rival.append(_in_thread(lambda: store.save(key, stale, expected_version=1)))
        waiting = [rival[0][0]]
        _wait_for_waiters(store, waiting, 1, "the plain save to queue")
        return _bump("holder")(current)

    assert store.save_locked(key, build, timeout=_PATIENCE) is not None
    thread, outcome = rival[0]
    thread.join(_PATIENCE)
    assert outcome == [False]
    loaded = store.load(key)
    assert loaded is not None and json.loads(loaded.data) == {"holder": True}


def test_a_lock_held_elsewhere_times_out_and_leaves_the_connection_as_it_was(
    open_sql: OpenSQL,
) -> None:
    """LockTimeout after the wait, naming the key by its prefix only; the pooled
    connection's own lock wait is back to what it was, and the next save works."""
    store = open_sql(pool_size=1, max_overflow=0)
    key = new_key()
    assert store.save(key, make_record(b"{}"), expected_version=None)
    usual = _lock_wait_setting(store)
    with _locked_elsewhere(store, key), pytest.raises(LockTimeout) as info:
        store.save_locked(key, _never_build, timeout=0.2)
    message = str(info.value)
    assert key[:8] in message and key not in message
    assert isinstance(info.value.__cause__, sa.exc.DBAPIError)
    assert _lock_wait_setting(store) == usual
    assert store.save_locked(key, _bump("later"), timeout=_PATIENCE) is not None
    assert _lock_wait_setting(store) == usual


@pytest.mark.parametrize("store_kind", ["postgresql"])
def test_a_lock_timeout_masks_the_password(store_kind: str, sql_url: str) -> None:
    url = sa.make_url(sql_url)
    if url.password is None:
        url = url.set(password="secretpw")  # the test server trusts loopback
    secret = str(url.password)
    store = SQLStore.from_url(
        url.render_as_string(hide_password=False),
        table_name=f"test_sessions_{uuid.uuid4().hex[:12]}",
    )
    try:
        key = new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)
        with _locked_elsewhere(store, key), pytest.raises(LockTimeout) as info:
            store.save_locked(key, _never_build, timeout=0.1)
        assert secret not in str(info.value)
        assert "***" in str(info.value)
    finally:
        store.table.drop(store.engine, checkfirst=True)
        store.close()


_DIES_HOLDING_THE_LOCK = """
import sys, time
from wsgisession.stores.sql import SQLStore

url, table, key = sys.argv[1:4]
store = SQLStore.from_url(url, table_name=table)

def build(current):
    print("building", flush=True)
    time.sleep(600)

store.save_locked(key, build, timeout=30)
"""


def test_a_holder_killed_mid_build_releases_the_lock(
    store_kind: str, sql_url: str, open_sql: OpenSQL
) -> None:
    """The database ends the dead process's transaction, and the waiter goes on."""
    store = open_sql()
    key = new_key()
    assert store.save(key, make_record(b"{}"), expected_version=None)
    child = python_child(_DIES_HOLDING_THE_LOCK, sql_url, store.table.name, key)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "building\n", child.stderr
        waiter, outcome = _in_thread(
            lambda: store.save_locked(key, _bump("survivor"), timeout=_PATIENCE)
        )
        if store_kind != "sqlite":
            _wait_for_waiters(store, [], 1, "the survivor to queue")
    finally:
        child.kill()
        child.communicate(timeout=_PATIENCE)
    waiter.join(_PATIENCE)
    assert len(outcome) == 1 and isinstance(outcome[0], Record), outcome
    loaded = store.load(key)
    assert loaded is not None and loaded.version == 2
    assert json.loads(loaded.data) == {"survivor": True}


def test_a_ready_engine_in_autocommit_still_holds_the_lock(sql_url: str) -> None:
    """Its conn.begin() opens nothing; a SELECT … FOR UPDATE alone would lock nothing."""
    engine = sa.create_engine(sql_url, isolation_level="AUTOCOMMIT")
    store = SQLStore(engine, table_name=f"test_sessions_{uuid.uuid4().hex[:12]}")
    try:
        key = new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)
        rival: list[tuple[threading.Thread, list[object]]] = []

        def build(current: Record) -> Record:
            stale = make_record(b"{}", version=2)
            rival.append(_in_thread(lambda: store.save(key, stale, expected_version=1)))
            waiting = [rival[0][0]]
            _wait_for_waiters(store, waiting, 1, "the plain save to queue")
            return _bump("holder")(current)

        assert store.save_locked(key, build, timeout=_PATIENCE) is not None
        rival[0][0].join(_PATIENCE)
        assert rival[0][1] == [False]
    finally:
        store.table.drop(engine, checkfirst=True)
        engine.dispose()


def test_sqlite_threads_hammering_sessions_never_hit_the_busy_timeout(tmp_path: Path) -> None:
    """64 threads write one session and each its own, as the middleware does.

    The busy handler alone lets newcomers take the write lock from long waiters until
    one gives up with "database is locked"; this process's queue serves them in turn.
    """
    threads, writes = 64, 5
    with SQLStore.from_url(
        f"sqlite:///{tmp_path / 'busy.db'}", pool_size=threads, max_overflow=0
    ) as store:
        shared = new_key()
        assert store.save(shared, make_record(b"{}"), expected_version=None)

        def writer(n: int) -> None:
            own = new_key()
            assert store.save(own, make_record(b"{}"), expected_version=None)
            for i in range(writes):
                name = f"t{n}-{i}"
                for _ in range(3):
                    current = store.load(shared)
                    assert current is not None
                    if store.save(shared, _bump(name)(current), expected_version=current.version):
                        break
                else:
                    assert store.save_locked(shared, _bump(name), timeout=_PATIENCE) is not None
                mine = store.load(own)
                assert mine is not None
                assert store.save(own, _bump(name)(mine), expected_version=mine.version)

        _run_threads(threads, writer)
        loaded = store.load(shared)
        assert loaded is not None and loaded.version == 1 + threads * writes
