"""Fixtures of the store tests: what the conformance suite needs besides ``store``, a
file store's directory, SQL databases and stores, Redis stores on the shared server and
on the Cluster, and redis-py's round trips.

Only fixtures live here, built from :mod:`tests.helpers`, which is what tests import.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.connection import AbstractConnection

from tests.helpers import (
    SQL_KINDS,
    OpenSQL,
    isolation_options,
    open_test_store,
    reachable_sql_url,
    store_class,
    store_url,
    unique_table_name,
    unreachable_store_url,
)
from wsgisession.stores import Store
from wsgisession.stores.file import FileStore
from wsgisession.stores.redis import RedisStore
from wsgisession.stores.sql import SQLStore

# -- the conformance suite ------------------------------------------------------------


@pytest.fixture
def store_factory(
    store_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[..., Store]:
    """``from_url`` of the store under test, on its URL: called with store options."""
    url = store_url(store_kind, request, tmp_path)
    return functools.partial(store_class(store_kind).from_url, url)


@pytest.fixture
def unreachable_store(store_kind: str, tmp_path: Path) -> Callable[[], Store]:
    """Build the store under test on a backend that isn't there (none for memory)."""
    url = unreachable_store_url(store_kind, tmp_path)
    return functools.partial(
        store_class(store_kind).from_url, url, **isolation_options(store_kind)
    )


# -- the file store ---------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Where the file store under test keeps its files (not created beforehand)."""
    return tmp_path / "sessions"


@pytest.fixture
def file_store(root: Path) -> Iterator[FileStore]:
    """A fresh file store with the default options."""
    with FileStore(root) as store:
        yield store


# -- SQL ----------------------------------------------------------------------------------


@pytest.fixture(params=SQL_KINDS)
def sql_kind(request: pytest.FixtureRequest) -> str:
    """The SQL database under test: SQLite, and the PostgreSQL and MariaDB servers."""
    kind: str = request.param
    return kind


@pytest.fixture
def sql_url(sql_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a reachable database of the kind under test."""
    return reachable_sql_url(sql_kind, request, tmp_path)


@pytest.fixture
def sql_store(sql_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLStore]:
    """A fresh SQL store of the kind under test, on a table of its own."""
    for store in open_test_store(sql_kind, request, tmp_path):
        assert isinstance(store, SQLStore)
        yield store


@pytest.fixture
def open_sql(sql_url: str) -> Iterator[OpenSQL]:
    """Open SQLStores on one table no other test uses; drop it and close them after."""
    table_name = unique_table_name()
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


# -- Redis --------------------------------------------------------------------------------


@pytest.fixture
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisStore]:
    """A store on the shared Redis server, under a prefix of this test alone."""
    for store in open_test_store("redis", request, tmp_path):
        assert isinstance(store, RedisStore)
        yield store


@pytest.fixture(params=["redis", pytest.param("redis-cluster", id="cluster")])
def indexed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisStore]:
    """A store on the shared Redis server, then on the Cluster."""
    for store in open_test_store(request.param, request, tmp_path):
        assert isinstance(store, RedisStore)
        yield store


@pytest.fixture
def cluster(redis_cluster_url: str) -> Iterator[RedisStore]:
    """A store on the test Redis Cluster, under a prefix of this test alone."""
    store = RedisStore.from_url(redis_cluster_url, key_prefix=f"t{uuid.uuid4().hex[:8]}:")
    try:
        yield store
    finally:
        for name in list(store.client.scan_iter(match=store.key_prefix + "*")):
            store.client.delete(name)
        store.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every command redis-py sends from now on, one per round trip."""
    names: list[str] = []
    original = AbstractConnection.send_command

    def send_command(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        name = args[0]
        names.append((name.decode() if isinstance(name, bytes) else str(name)).upper())
        original(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_command", send_command)
    return names
