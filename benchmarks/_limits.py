"""The two limits wsgisession is measured against besides its peers.

* :func:`passthrough`: a middleware that only puts a dict in the environ and wraps
  ``start_response``, the least a session middleware can cost on a request that never
  touches its session.
* :class:`RawSession`: the store work of each scenario done by hand with the driver
  (redis-py ``GET``/``SET``, pymemcache ``get``/``set``/``add``/``touch``, one
  primary-key ``SELECT``/``UPDATE`` with SQLAlchemy Core, a file read or a temp-file
  write and ``os.replace``), with no signing, hashing,
  merging or policy: the least a read, a write or a new session can cost.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import redis
import sqlalchemy as sa
from _scenarios import TIMEOUT

COOKIE = "raw_id"


def passthrough(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Wrap *app* in the cheapest middleware that offers a session: a dict."""

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ["session"] = {}

        def wrapped_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            return start_response(status, headers, exc_info)

        return app(environ, wrapped_start_response)

    return middleware


class RawStore(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, data: bytes) -> None: ...
    def create(self, key: str, data: bytes) -> None: ...
    def touch(self, key: str) -> None: ...
    def close(self) -> None: ...


class RawSession:
    """The store work a scenario needs, by hand: the physical limit for that scenario.

    The cookie value is the store key itself, unsigned; the data is plain JSON.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], store: RawStore) -> None:
        self.app = app
        self.store = store

    def seed(self, data: dict[str, Any]) -> str:
        key = secrets.token_urlsafe(32)
        self.store.create(key, json.dumps(data).encode())
        return f"{COOKIE}={key}"

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        scenario = environ["bench.scenario"]
        store = self.store
        cookie = environ.get("HTTP_COOKIE", "")
        at = cookie.find(COOKIE + "=")
        key = cookie[at + len(COOKIE) + 1 :].split(";", 1)[0] if at >= 0 else None
        data: dict[str, Any] = {}
        if key is not None and scenario != "untouched":
            blob = store.get(key)
            if blob is not None:
                data = json.loads(blob)
        environ["session"] = data

        def raw_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            if scenario in ("write", "big"):
                assert key is not None
                store.put(key, json.dumps(data).encode())
            elif scenario == "new":
                new_key = secrets.token_urlsafe(32)
                store.create(new_key, json.dumps(data).encode())
                headers.append(("Set-Cookie", f"{COOKIE}={new_key}; HttpOnly; Path=/"))
            elif scenario == "refresh":
                assert key is not None
                store.touch(key)
            return start_response(status, headers, exc_info)

        return self.app(environ, raw_start_response)


class RawMemory:
    """A dict of ``key -> (data, expires_at)``."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[bytes, float]] = {}

    def get(self, key: str) -> bytes | None:
        found = self.records.get(key)
        return found[0] if found is not None and found[1] > time.time() else None

    def put(self, key: str, data: bytes) -> None:
        self.records[key] = (data, time.time() + TIMEOUT)

    create = put

    def touch(self, key: str) -> None:
        self.records[key] = (self.records[key][0], time.time() + TIMEOUT)

    def close(self) -> None:
        self.records.clear()


class RawFile:
    """One file per key; writes go through a temp file and ``os.replace``; expiry is mtime."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = str(directory)

    def get(self, key: str) -> bytes | None:
        try:
            with open(os.path.join(self.directory, key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        fd, temp = tempfile.mkstemp(dir=self.directory)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, os.path.join(self.directory, key))

    create = put

    def touch(self, key: str) -> None:
        expires = time.time() + TIMEOUT
        os.utime(os.path.join(self.directory, key), (expires, expires))

    def close(self) -> None:
        pass


class RawSQL:
    """One table ``(id, data, expires_at)``; one primary-key statement per operation."""

    def __init__(self, url: str, table_name: str) -> None:
        # Autocommit on PostgreSQL: one statement is one round trip, the least there is.
        options = {"isolation_level": "AUTOCOMMIT"} if url.startswith("postgresql") else {}
        self.engine = sa.create_engine(url, **options)
        if url.startswith("sqlite"):
            # The journal mode wsgisession uses: a commit appends to the WAL.
            sa.event.listen(self.engine, "connect", _wal)
        metadata = sa.MetaData()
        self.table = t = sa.Table(
            table_name,
            metadata,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("data", sa.LargeBinary, nullable=False),
            sa.Column("expires_at", sa.Double, nullable=False),
        )
        metadata.create_all(self.engine)
        key = sa.bindparam("k")
        self._select = sa.select(t.c.data, t.c.expires_at).where(t.c.id == key)
        self._update = (
            sa.update(t)
            .where(t.c.id == key)
            .values(data=sa.bindparam("d"), expires_at=sa.bindparam("e"))
        )
        self._touch = sa.update(t).where(t.c.id == key).values(expires_at=sa.bindparam("e"))
        self._insert = sa.insert(t)

    def get(self, key: str) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(self._select, {"k": key}).first()
        return bytes(row.data) if row is not None and row.expires_at > time.time() else None

    def put(self, key: str, data: bytes) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._update, {"k": key, "d": data, "e": time.time() + TIMEOUT})

    def create(self, key: str, data: bytes) -> None:
        with self.engine.begin() as conn:
            values = {"id": key, "data": data, "expires_at": time.time() + TIMEOUT}
            conn.execute(self._insert, values)

    def touch(self, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._touch, {"k": key, "e": time.time() + TIMEOUT})

    def close(self) -> None:
        self.table.drop(self.engine, checkfirst=True)
        self.engine.dispose()


class RawRedis:
    """One string per key with a TTL."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self.client.get(self.prefix + key)
        return value

    def put(self, key: str, data: bytes) -> None:
        self.client.set(self.prefix + key, data, ex=TIMEOUT)

    create = put

    def touch(self, key: str) -> None:
        self.client.expire(self.prefix + key, TIMEOUT)

    def close(self) -> None:
        pass


class RawMemcached:
    """One value per key with memcached's expiry, through a pooled pymemcache client."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self.client.get(self.prefix + key)
        return value

    def put(self, key: str, data: bytes) -> None:
        self.client.set(self.prefix + key, data, expire=TIMEOUT, noreply=False)

    def create(self, key: str, data: bytes) -> None:
        self.client.add(self.prefix + key, data, expire=TIMEOUT, noreply=False)

    def touch(self, key: str) -> None:
        self.client.touch(self.prefix + key, TIMEOUT, noreply=False)

    def close(self) -> None:
        self.client.close()


def _wal(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()
