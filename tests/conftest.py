"""Shared fixtures: the ``store`` fixture over every store, and server handling.

Server URLs default to the loopback services of the development machine and can be
moved with ``WSGISESSION_TEST_POSTGRESQL_URL``, ``WSGISESSION_TEST_MARIADB_URL`` and
``WSGISESSION_TEST_REDIS_URL``. A server that cannot be reached skips its tests with
the masked URL as the reason, unless ``WSGISESSION_REQUIRE_SERVICES=1``, which turns
the skip into a failure (CI sets it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from wsgisession.errors import StoreError
from wsgisession.stores import Store, open_store
from wsgisession.stores.base import mask_url

pytest_plugins = ["tests.redis_servers"]

SERVER = pytest.mark.server

DEFAULT_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mariadb+pymysql://root@127.0.0.1:3306/test",
    "redis": "redis://127.0.0.1:6379/0",
}

STORE_KINDS = [
    "memory",
    "file",
    "sqlite",
    pytest.param("postgresql", marks=SERVER),
    pytest.param("mariadb", marks=SERVER),
    pytest.param("redis", marks=SERVER),
    pytest.param("redis-sentinel", marks=SERVER),
    pytest.param("redis-cluster", marks=SERVER),
]


#: The SQL databases, and those of them that are servers.
SQL_KINDS = [
    "sqlite",
    pytest.param("postgresql", marks=SERVER),
    pytest.param("mariadb", marks=SERVER),
]
SQL_SERVER_KINDS = SQL_KINDS[1:]


def services_required() -> bool:
    """Whether an unreachable server must fail the test instead of skipping it."""
    return os.environ.get("WSGISESSION_REQUIRE_SERVICES", "") not in ("", "0")


def server_url(kind: str) -> str:
    """The URL of the shared test server for *kind* (postgresql, mariadb, redis)."""
    return os.environ.get(f"WSGISESSION_TEST_{kind.upper()}_URL", DEFAULT_URLS[kind])


def unreachable(url: str, exc: BaseException) -> NoReturn:
    """Skip (or fail, when services are required) because *url* can't be reached."""
    reason = f"store {mask_url(url)} is not reachable: {exc}"
    if services_required():
        pytest.fail(reason)
    pytest.skip(reason)


def store_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URL of a store of *kind* that no other test uses."""
    if kind == "memory":
        return "memory://"
    if kind == "file":
        return f"file:{tmp_path / 'sessions'}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    if kind == "redis-sentinel":
        url: str = request.getfixturevalue("redis_sentinel_url")
        return url
    if kind == "redis-cluster":
        url = request.getfixturevalue("redis_cluster_url")
        return url
    return server_url(kind)


def reachable_sql_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return :func:`store_url` for SQL database *kind*, once a connection to it works."""
    import sqlalchemy as sa

    url = store_url(kind, request, tmp_path)
    engine = sa.create_engine(url)
    try:
        with engine.connect():
            pass
    except sa.exc.SQLAlchemyError as exc:
        unreachable(url, exc)
    finally:
        engine.dispose()
    return url


def isolation_options(kind: str) -> dict[str, Any]:
    """Store options that keep one test's records apart from every other test's."""
    token = uuid.uuid4().hex[:12]
    if kind in ("postgresql", "mariadb"):
        return {"table_name": f"test_sessions_{token}"}
    if kind.startswith("redis"):
        return {"key_prefix": f"test:{token}:"}
    return {}


def open_test_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, **options: Any
) -> Iterator[Store]:
    """Open a fresh store of *kind*, make sure it is reachable, and clean it up after."""
    url = store_url(kind, request, tmp_path)
    store = open_store(url, **{**isolation_options(kind), **options})
    try:
        store.ping()
    except StoreError as exc:
        store.close()
        unreachable(url, exc)
    try:
        yield store
    finally:
        _drop(kind, store)
        store.close()


def _drop(kind: str, store: Store) -> None:
    # Server stores are shared across tests and runs: leave nothing behind.
    if kind in ("postgresql", "mariadb"):
        store.table.drop(store.engine, checkfirst=True)  # type: ignore[attr-defined]
    elif kind.startswith("redis"):
        client = store.client  # type: ignore[attr-defined]
        for key in list(client.scan_iter(match=store.key_prefix + "*")):  # type: ignore[attr-defined]
            client.delete(key)


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """The name of the store under test, one per parameter."""
    kind: str = request.param
    return kind


@pytest.fixture
def store(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store of every kind in turn."""
    yield from open_test_store(store_kind, request, tmp_path)


class FakeClock:
    """The application's clock (wsgisession._clock.now), moved by hand: the middleware and
    every store read it."""

    def __init__(self) -> None:
        import time

        self.offset = 0.0
        self._time = time.time

    def __call__(self) -> float:
        return self._time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock *seconds* forward."""
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Move the middleware's clock with ``clock.advance(seconds)``."""
    fake = FakeClock()
    monkeypatch.setattr("wsgisession._clock.now", fake)
    return fake
