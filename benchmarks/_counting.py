"""Counting what a request sends to its store, in an untimed pass.

* Redis client round trips: every ``send_packed_command`` of a connection, so a
  pipeline or one ``EVALSHA`` is one. Clients get :class:`CountingConnection`.
* Redis server commands: ``INFO commandstats`` deltas, commands run inside Lua scripts
  included. The server is shared, so the pass is repeated and the smallest delta kept:
  other clients' traffic only ever adds.
* SQL: statements sent (``before_cursor_execute``), transaction control (``begin``,
  ``commit``, ``rollback``), the pool's reset on return, and pre-ping queries; on
  PostgreSQL also the network round trips themselves, from libpq's protocol trace.
* Memcached round trips: every command a pymemcache ``Client`` sends and waits on
  (``get``/``gets`` of several keys is one); pooled and hashed clients go through it.
  The store's request path also sends on connections it holds, through two functions
  of ``wsgisession.stores._memcached_direct``, counted the same way.
* Files opened: calls of ``open`` and ``os.open`` (temp files and lock files included).
* Bytes sent: what went to Redis, into SQL parameters, or through ``os.write`` and
  ``os.pwrite``; it tells an expiry update from a rewrite of the whole record.

Counting hooks are installed only for the pass and removed after it, so timed runs
never pay for them.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import redis
import sqlalchemy as sa
from pymemcache.client.base import Client as MemcacheClient
from sqlalchemy import event
from sqlalchemy.engine import default as sa_default

from wsgisession.stores import _memcached_direct

#: What the current pass has seen; reset by :func:`counting`.
SEEN: Counter[str] = Counter()
_ON = [False]


class CountingConnection(redis.Connection):
    """A redis-py connection that counts what it sends, one per round trip."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if _ON[0]:
            SEEN["redis_round_trips"] += 1
            parts = [command] if isinstance(command, bytes | str) else command
            SEEN["bytes_sent"] += sum(len(part) for part in parts)
        super().send_packed_command(command, check_health)


def _memcached_hooks() -> list[tuple[str, Callable[..., Any]]]:
    """Wrappers of the three methods through which pymemcache sends every command."""

    def fetch(real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(self: Any, name: bytes, keys: Any, *args: Any, **kwargs: Any) -> Any:
            SEEN["memcached_round_trips"] += 1
            SEEN["bytes_sent"] += sum(len(k) for k in keys)
            return real(self, name, keys, *args, **kwargs)

        return counted

    def store(real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(self: Any, name: bytes, values: Any, *args: Any, **kwargs: Any) -> Any:
            SEEN["memcached_round_trips"] += 1
            SEEN["bytes_sent"] += sum(len(k) + len(v) for k, v in values.items())
            return real(self, name, values, *args, **kwargs)

        return counted

    def misc(real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(self: Any, cmds: Any, *args: Any, **kwargs: Any) -> Any:
            SEEN["memcached_round_trips"] += 1
            SEEN["bytes_sent"] += sum(len(c) for c in cmds)
            return real(self, cmds, *args, **kwargs)

        return counted

    return [("_fetch_cmd", fetch), ("_store_cmd", store), ("_misc_cmd", misc)]


def _held_memcached_hooks() -> list[tuple[str, Callable[..., Any]]]:
    """Wrappers of the two functions through which the memcached store's held
    connections send the request path's commands."""

    def fetch(real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(sock: Any, command: bytes) -> Any:
            SEEN["memcached_round_trips"] += 1
            SEEN["bytes_sent"] += len(command)
            return real(sock, command)

        return counted

    def store(real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(sock: Any, name: bytes, head: bytes, value: bytes, replies: Any) -> Any:
            SEEN["memcached_round_trips"] += 1
            SEEN["bytes_sent"] += len(head) + len(value)
            return real(sock, name, head, value, replies)

        return counted

    return [("_fetch", fetch), ("_store", store)]


def count_redis(client: Any) -> None:
    """Make *client*'s future connections count their round trips."""
    pool = client.connection_pool
    if pool.connection_class is redis.Connection:
        pool.connection_class = CountingConnection
        pool.disconnect()


def _statement(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> None:
    word = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
    SEEN["sql_statements"] += 1
    SEEN["sql:" + word] += 1
    rows = parameters if many else [parameters]
    for row in rows:
        values = row.values() if isinstance(row, dict) else row or ()
        SEEN["bytes_sent"] += sum(len(v) for v in values if isinstance(v, bytes | str))


def _begin(conn: Any) -> None:
    SEEN["sql_begin"] += 1


def _commit(conn: Any) -> None:
    SEEN["sql_commit"] += 1


def _rollback(conn: Any) -> None:
    SEEN["sql_rollback"] += 1


def _reset(dbapi_connection: Any, record: Any, state: Any) -> None:
    # The pool rolls back on return only if the connection left a transaction open.
    if not state.transaction_was_reset:
        SEEN["sql_pool_reset"] += 1


class _PgTrace:
    """libpq's protocol trace of every PostgreSQL connection checked out meanwhile.

    Each simple ``Query`` and each ``Sync`` the client sends ends in one wait for the
    server: the exact number of network round trips, transaction control and pings
    included (psycopg sends ``BEGIN`` and ``COMMIT`` as queries of their own).
    """

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile("w+")

    def checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        pgconn = getattr(dbapi_connection, "pgconn", None)
        if pgconn is not None:
            pgconn.trace(self.file.fileno())

    def checkin(self, dbapi_connection: Any, record: Any) -> None:
        pgconn = getattr(dbapi_connection, "pgconn", None)
        if pgconn is not None:
            pgconn.untrace()

    def round_trips(self) -> int:
        self.file.flush()
        self.file.seek(0)
        count = 0
        for line in self.file:
            fields = line.rstrip("\n").split("\t")
            if "F" in fields[:2]:
                kind = fields[fields.index("F") + 2] if len(fields) > 3 else ""
                count += kind in ("Query", "Sync")
        return count


_SQL_HOOKS: list[tuple[Any, str, Callable[..., None]]] = [
    (sa.engine.Engine, "before_cursor_execute", _statement),
    (sa.engine.Engine, "begin", _begin),
    (sa.engine.Engine, "commit", _commit),
    (sa.engine.Engine, "rollback", _rollback),
    (sa.pool.Pool, "reset", _reset),
]


@contextlib.contextmanager
def counting() -> Iterator[Counter[str]]:
    """Count store traffic inside the block into the returned (fresh) counter."""
    SEEN.clear()
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open
    real_write, real_pwrite = os.write, os.pwrite
    real_ping = sa_default.DefaultDialect._do_ping_w_event

    def counted_open(*args: Any, **kwargs: Any) -> Any:
        SEEN["files_opened"] += 1
        return real_open(*args, **kwargs)

    def counted_os_open(*args: Any, **kwargs: Any) -> int:
        SEEN["files_opened"] += 1
        return real_os_open(*args, **kwargs)

    def counted_write(fd: int, data: Any) -> int:
        SEEN["bytes_sent"] += len(data)
        return real_write(fd, data)

    def counted_pwrite(fd: int, data: Any, offset: int) -> int:
        SEEN["bytes_sent"] += len(data)
        return real_pwrite(fd, data, offset)

    def counted_ping(self: Any, dbapi_connection: Any) -> bool:
        SEEN["sql_ping"] += 1
        return real_ping(self, dbapi_connection)

    trace = _PgTrace()
    hooks = [
        *_SQL_HOOKS,
        (sa.pool.Pool, "checkout", trace.checkout),
        (sa.pool.Pool, "checkin", trace.checkin),
    ]
    for target, name, fn in hooks:
        event.listen(target, name, fn)
    builtins.open = io.open = counted_open
    os.open = counted_os_open
    os.write, os.pwrite = counted_write, counted_pwrite
    sa_default.DefaultDialect._do_ping_w_event = counted_ping  # type: ignore[method-assign]
    real_memcached = {name: getattr(MemcacheClient, name) for name, _ in _memcached_hooks()}
    for name, wrap in _memcached_hooks():
        setattr(MemcacheClient, name, wrap(real_memcached[name]))
    real_held = {name: getattr(_memcached_direct, name) for name, _ in _held_memcached_hooks()}
    for name, wrap in _held_memcached_hooks():
        setattr(_memcached_direct, name, wrap(real_held[name]))
    _ON[0] = True
    try:
        yield SEEN
    finally:
        _ON[0] = False
        builtins.open, io.open, os.open = real_open, real_io_open, real_os_open
        os.write, os.pwrite = real_write, real_pwrite
        sa_default.DefaultDialect._do_ping_w_event = real_ping  # type: ignore[method-assign]
        for name, real in real_memcached.items():
            setattr(MemcacheClient, name, real)
        for name, real in real_held.items():
            setattr(_memcached_direct, name, real)
        for target, name, fn in hooks:
            event.remove(target, name, fn)
        if trips := trace.round_trips():
            SEEN["pg_round_trips"] += trips
        trace.file.close()


def commandstats(client: redis.Redis) -> Counter[str]:
    """The server's ``INFO commandstats`` calls, by command name."""
    info: dict[str, Any] = client.info("commandstats")
    return Counter(
        {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}
    )


def server_commands(client: redis.Redis, work: Callable[[], None], repeats: int) -> Counter[str]:
    """Commands the Redis server ran for *work*: the smallest delta over *repeats* runs.

    ``INFO`` itself is subtracted. Other clients of a shared server only ever add to a
    delta, so the smallest one is the closest to this process's own traffic.
    """
    best: Counter[str] | None = None
    for _ in range(repeats):
        before = commandstats(client)
        work()
        after = commandstats(client)
        delta = Counter({k: after[k] - before.get(k, 0) for k in after})
        delta["info"] -= 1
        delta = +delta
        if best is None or sum(delta.values()) < sum(best.values()):
            best = delta
    assert best is not None
    return best
