"""The SQL store's save lock (first come, first served; timeouts; a holder killed), and
SQLite written from several processes and threads at once.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from sys import _current_frames

import pytest
import sqlalchemy as sa

from tests.helpers import (
    PATIENCE,
    OpenSQL,
    in_thread,
    locked_elsewhere,
    merging_writer_code,
    never_build,
    python_child,
    unique_table_name,
    wait_until,
)
from wsgisession.errors import StoreError
from wsgisession.stores import LockTimeout, Record
from wsgisession.stores.sql import SQLStore
from wsgisession.testing import make_record, new_key
from wsgisession.testing._helpers import run_threads

# -- SQLite from several processes ---------------------------------------------------


_MERGER = merging_writer_code(
    "from wsgisession.stores.sql import SQLStore\nstore = SQLStore.from_url(sys.argv[1])"
)


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
            subprocess.Popen(
                [sys.executable, "-c", _MERGER, url, key, f"p{n}", str(writes), str(time.time())]
            )
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


_HOLDS_THE_WRITE_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(60)
"""


def test_sqlite_locked_by_another_process_still_reads_and_says_why_a_write_waits(
    tmp_path: Path,
) -> None:
    # A store's first operation took the write lock to create the table, found there;
    # failing, it left a transaction begun, and its retry said only "InvalidRequestError".
    with _sqlite_store(tmp_path) as first:
        key = new_key()
        assert first.save(key, make_record(b"kept"), expected_version=None)
        url = str(first.engine.url)
    with python_child(_HOLDS_THE_WRITE_LOCK, tmp_path / "shared.db") as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            with SQLStore.from_url(url, connect_args={"timeout": 0.2}) as fresh:
                loaded = fresh.load(key)
                assert loaded is not None and loaded.data == b"kept"
                with pytest.raises(StoreError, match="database is locked"):
                    fresh.save(new_key(), make_record(), expected_version=None)
        finally:
            holder.kill()


@pytest.mark.parametrize("timeout", [3_000_000.0, 315_360_000.0], ids=["35-days", "ten-years"])
def test_a_locked_save_takes_any_save_timeout_the_options_allow(
    open_sql: OpenSQL, timeout: float
) -> None:
    # PostgreSQL's lock_timeout stops at 24.8 days: past it, every locked save failed.
    store = open_sql()
    key = new_key()
    assert store.save(key, make_record(b"{}"), expected_version=None)
    assert store.save_locked(key, _bump("waited"), timeout=timeout) is not None


# -- the locked save -------------------------------------------------------------------


def _bump(name: str) -> Callable[[Record], Record]:
    """A build that adds ``name: True`` to the session's JSON data."""

    def build(current: Record) -> Record:
        data = json.loads(current.data)
        data[name] = True
        return make_record(json.dumps(data).encode(), version=current.version + 1)

    return build


def _wait_for_waiters(
    store: SQLStore, threads: list[threading.Thread], count: int, what: str
) -> None:
    """Poll until *count* statements wait for a lock (see :func:`_lock_waiters`)."""
    # InnoDB refreshes what INNODB_TRX shows only when it was last read more than
    # 0.1 s ago, so faster polling would keep showing the same snapshot.
    wait_until(what, lambda: _lock_waiters(store, threads) == count, PATIENCE, every=0.15)


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


def _lock_wait_setting(store: SQLStore) -> object:
    """The lock wait setting of the connection the store's one-connection pool holds."""
    query = {
        "sqlite": "PRAGMA busy_timeout",
        "postgresql": "SHOW lock_timeout",
    }.get(store.engine.dialect.name, "SELECT @@SESSION.innodb_lock_wait_timeout")
    with store.engine.connect() as conn:
        return conn.exec_driver_sql(query).scalar_one()


def test_locked_saves_take_the_lock_first_come_first_served(sql_store: SQLStore) -> None:
    """Each waits in the database's queue (this process's, on SQLite) in arrival order.

    On PostgreSQL the holder's save writes a new row version, and every waiter, the
    first included, follows the update chain to lock that one: they may pass each
    other, and none is lost (docs/stores/sql.rst).
    """
    key = new_key()
    assert sql_store.save(key, make_record(b"{}"), expected_version=None)
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def save(name: str) -> Record | None:
        def build(current: Record) -> Record:
            order.append(name)
            if name == "holder":
                holding.set()
                release.wait(PATIENCE)
            return _bump(name)(current)

        return sql_store.save_locked(key, build, timeout=PATIENCE)

    started = [in_thread(partial(save, "holder"))]
    try:
        assert holding.wait(PATIENCE), "the first locked save never built"
        for n, name in enumerate(["first", "second", "third"], start=1):
            started.append(in_thread(partial(save, name)))
            waiting = [thread for thread, _ in started[1:]]
            _wait_for_waiters(sql_store, waiting, n, f"{name} to queue")
    finally:
        release.set()
        for thread, _ in started:
            thread.join(PATIENCE)
    assert all(isinstance(outcome[0], Record) for _, outcome in started), started
    if sql_store.engine.dialect.name == "postgresql":
        assert order[0] == "holder"
        assert sorted(order[1:]) == ["first", "second", "third"]
    else:
        assert order == ["holder", "first", "second", "third"]
    loaded = sql_store.load(key)
    assert loaded is not None and loaded.version == 5
    assert json.loads(loaded.data) == dict.fromkeys(["holder", "first", "second", "third"], True)


@pytest.mark.parametrize(
    "autocommit", [False, True], ids=["own-engine", "ready-autocommit-engine"]
)
def test_a_plain_save_waits_for_a_locked_save_then_loses(sql_url: str, autocommit: bool) -> None:
    """It queues behind the lock instead of failing at once, and its version is stale.

    A caller's engine in autocommit holds the lock all the same: its conn.begin()
    opens nothing, and a SELECT … FOR UPDATE alone would lock nothing.
    """
    engine = sa.create_engine(sql_url, isolation_level="AUTOCOMMIT") if autocommit else None
    table_name = unique_table_name()
    if engine is None:
        store = SQLStore.from_url(sql_url, table_name=table_name)
    else:
        store = SQLStore(engine, table_name=table_name)
    try:
        key = new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)
        rival: list[tuple[threading.Thread, list[object]]] = []

        def build(current: Record) -> Record:
            stale = make_record(b'{"rival": true}', version=2)
            rival.append(in_thread(lambda: store.save(key, stale, expected_version=1)))
            _wait_for_waiters(store, [rival[0][0]], 1, "the plain save to queue")
            return _bump("holder")(current)

        assert store.save_locked(key, build, timeout=PATIENCE) is not None
        thread, outcome = rival[0]
        thread.join(PATIENCE)
        assert outcome == [False]
        loaded = store.load(key)
        assert loaded is not None and json.loads(loaded.data) == {"holder": True}
    finally:
        store.table.drop(store.engine, checkfirst=True)
        store.close()
        if engine is not None:
            engine.dispose()


def test_a_lock_held_elsewhere_times_out_and_leaves_the_connection_as_it_was(
    open_sql: OpenSQL,
) -> None:
    """LockTimeout after the wait, naming the key by its prefix only; the pooled
    connection's own lock wait is back to what it was, and the next save works."""
    store = open_sql(pool_size=1, max_overflow=0)
    key = new_key()
    assert store.save(key, make_record(b"{}"), expected_version=None)
    usual = _lock_wait_setting(store)
    with locked_elsewhere(store, key), pytest.raises(LockTimeout) as info:
        store.save_locked(key, never_build, timeout=0.2)
    message = str(info.value)
    assert key[:8] in message and key not in message
    assert isinstance(info.value.__cause__, sa.exc.DBAPIError)
    assert _lock_wait_setting(store) == usual
    assert store.save_locked(key, _bump("later"), timeout=PATIENCE) is not None
    assert _lock_wait_setting(store) == usual


@pytest.mark.parametrize("sql_kind", ["postgresql"])
def test_a_lock_timeout_masks_the_password(sql_kind: str, sql_url: str) -> None:
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
        with locked_elsewhere(store, key), pytest.raises(LockTimeout) as info:
            store.save_locked(key, never_build, timeout=0.1)
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
    sql_kind: str, sql_url: str, open_sql: OpenSQL
) -> None:
    """The database ends the dead process's transaction, and the waiter goes on."""
    store = open_sql()
    key = new_key()
    assert store.save(key, make_record(b"{}"), expected_version=None)
    child = python_child(_DIES_HOLDING_THE_LOCK, sql_url, store.table.name, key)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "building\n", child.stderr
        waiter, outcome = in_thread(
            lambda: store.save_locked(key, _bump("survivor"), timeout=PATIENCE)
        )
        if sql_kind != "sqlite":
            _wait_for_waiters(store, [], 1, "the survivor to queue")
    finally:
        child.kill()
        child.communicate(timeout=PATIENCE)
    waiter.join(PATIENCE)
    assert len(outcome) == 1 and isinstance(outcome[0], Record), outcome
    loaded = store.load(key)
    assert loaded is not None and loaded.version == 2
    assert json.loads(loaded.data) == {"survivor": True}


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
                    assert store.save_locked(shared, _bump(name), timeout=PATIENCE) is not None
                mine = store.load(own)
                assert mine is not None
                assert store.save(own, _bump(name)(mine), expected_version=mine.version)

        run_threads(threads, writer)
        loaded = store.load(shared)
        assert loaded is not None and loaded.version == 1 + threads * writes
