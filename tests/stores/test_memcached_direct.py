"""The memcached store's request path on connections it holds (docs/stores/memcached.rst).

The store's ``gets``, ``add`` and ``cas`` skip pymemcache's command layer on a client of
the pool it made, one per thread, and speak the protocol on its socket: each reply
must be its own command's, whatever happened to the one before (a timeout, a server
that closed the connection, an error reply, a fork); a value must come back byte for
byte whatever it holds; a thread that ends gives its client back; a capped pool, a
pool that closes idle connections, or a client the application made go through
pymemcache.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pymemcache.client.base import Client, PooledClient
from pymemcache.exceptions import MemcacheIllegalInputError

from tests.helpers import (
    PATIENCE,
    SERVER,
    check_a_forked_child_reads_its_own,
    check_a_late_reply_is_never_read,
    check_close_waits_for_a_command,
    check_threads_read_their_own,
    check_threads_that_end_hand_on,
    wait_until,
)
from tests.memcached_servers import MemcachedServer, started
from tests.tcp_proxy import SlowReplies
from wsgisession.errors import StoreError
from wsgisession.stores import _held
from wsgisession.stores._memcached_direct import Held
from wsgisession.stores.memcached import MemcachedStore
from wsgisession.testing import make_record, new_key

pytestmark = SERVER


@pytest.fixture
def through_pymemcache(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every command sent through pymemcache's command layer from now on."""
    names: list[str] = []
    fetch, store = Client._fetch_cmd, Client._store_cmd

    def fetch_cmd(self: Client, name: bytes, *args: Any, **kwargs: Any) -> Any:
        names.append(name.decode())
        return fetch(self, name, *args, **kwargs)

    def store_cmd(self: Client, name: bytes, *args: Any, **kwargs: Any) -> Any:
        names.append(name.decode())
        return store(self, name, *args, **kwargs)

    monkeypatch.setattr(Client, "_fetch_cmd", fetch_cmd)
    monkeypatch.setattr(Client, "_store_cmd", store_cmd)
    return names


def _every_kind_of_request(store: MemcachedStore) -> None:
    key = new_key()
    assert store.save(key, make_record(b"one"), expected_version=None)  # add
    loaded = store.load(key)  # gets of the record and its lock
    assert loaded is not None and loaded.data == b"one"
    # cas, on the token the load kept
    assert store.save(key, make_record(b"two", version=2), expected_version=1)
    assert store.load(key) is not None
    assert store.refresh(key, time.time() + 7200, time.time())  # cas
    loaded = store.load(key)
    assert loaded is not None and (loaded.data, loaded.version) == (b"two", 2)


def _connections(server: MemcachedServer, stat: str = "curr_connections") -> int:
    """The server's open connections, the listener and this question's own included (or
    another of its ``stats``)."""
    watcher = Client(("127.0.0.1", server.port))
    try:
        return int(watcher.stats()[stat.encode()])
    finally:
        watcher.close()


def test_the_request_path_of_a_store_from_a_url_skips_pymemcache(
    private_memcached: MemcachedServer, through_pymemcache: list[str]
) -> None:
    with MemcachedStore.from_url(private_memcached.url) as store:
        assert store.load(new_key()) is None  # connects this thread's client
        assert through_pymemcache == ["gets"]
        through_pymemcache.clear()
        _every_kind_of_request(store)
    assert through_pymemcache == []


@pytest.mark.parametrize("how", ["given a client", "capped pool", "idle timeout"])
def test_other_clients_go_through_pymemcache(
    how: str, private_memcached: MemcachedServer, through_pymemcache: list[str]
) -> None:
    if how == "given a client":
        # The application's client: its pool may be shared and capped by others.
        client = PooledClient(("127.0.0.1", private_memcached.port), default_noreply=False)
        store = MemcachedStore(client)
    elif how == "capped pool":
        store = MemcachedStore.from_url(private_memcached.url, max_pool_size=4)
    else:
        # Held connections are never idle in the pool, so it could close none of them.
        store = MemcachedStore.from_url(private_memcached.url, pool_idle_timeout=30)
    with store:
        _every_kind_of_request(store)
    assert {"gets", "add", "cas"} <= set(through_pymemcache)


def test_concurrent_threads_each_read_their_own_records(
    private_memcached: MemcachedServer, through_pymemcache: list[str]
) -> None:
    """Each thread on a client of its own; pymemcache only connects each."""
    with MemcachedStore.from_url(private_memcached.url) as store:
        check_threads_read_their_own(store, threads=8)
    # Of 8 saves in this thread and 80 commands in each other, only the first of each
    # thread connects its client (or fewer: a thread that ended hands its client on).
    assert 0 < len(through_pymemcache) <= 9


@pytest.mark.parametrize(
    "data",
    [
        b"\r\nEND\r\nVALUE x 0 1 1\r\n",  # the protocol's own words inside a value
        bytes(range(256)) * 3,
        b"",
        os.urandom(900_000),  # many reads of the socket
    ],
    ids=["protocol-words", "every-byte", "empty", "900-kb"],
)
def test_a_value_comes_back_byte_for_byte(private_memcached: MemcachedServer, data: bytes) -> None:
    with MemcachedStore.from_url(private_memcached.url) as store:
        key, other = new_key(), new_key()
        assert store.save(key, make_record(data), expected_version=None)
        assert store.save(other, make_record(b"other"), expected_version=None)
        loaded = store.load(key)
        assert loaded is not None and loaded.data == data
        again = store.load(other)
        assert again is not None and again.data == b"other"


def test_a_thread_that_ends_gives_its_client_back(private_memcached: MemcachedServer) -> None:
    with MemcachedStore.from_url(private_memcached.url) as store:
        check_threads_that_end_hand_on(store, lambda: _connections(private_memcached))


def test_close_waits_for_a_command_under_way_then_closes_each_connection(
    private_memcached: MemcachedServer,
) -> None:
    idle = _connections(private_memcached)
    with SlowReplies(("127.0.0.1", private_memcached.port)) as proxy:
        store = MemcachedStore.from_url(f"memcached://127.0.0.1:{proxy.port}")
        check_close_waits_for_a_command(
            store, proxy, lambda: _connections(private_memcached), idle
        )


def test_a_reply_that_comes_too_late_is_never_read_as_the_next_commands(
    private_memcached: MemcachedServer,
) -> None:
    with (
        SlowReplies(("127.0.0.1", private_memcached.port)) as proxy,
        MemcachedStore.from_url(f"memcached://127.0.0.1:{proxy.port}", timeout=0.3) as store,
    ):
        check_a_late_reply_is_never_read(store, proxy)


def test_an_error_reply_closes_nothing_it_should_not(private_memcached: MemcachedServer) -> None:
    """A value over the item limit is refused as before, and the thread's next command
    works on a connection dialled again."""
    with MemcachedStore.from_url(private_memcached.url) as store:
        key = new_key()
        assert store.save(key, make_record(b"small"), expected_version=None)
        with pytest.raises(StoreError, match="item_size_max"):
            store.save(new_key(), make_record(bytes(1 << 20)), expected_version=None)
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"small"


def test_a_connection_the_server_closed_while_idle_costs_no_failed_request() -> None:
    server = started("-o", "idle_timeout=1")
    try:
        idle = _connections(server)
        with MemcachedStore.from_url(server.url) as store:
            key = new_key()
            assert store.save(key, make_record(b"kept"), expected_version=None)
            wait_until(
                "the server to drop the idle connection",
                lambda: _connections(server) == idle,
                PATIENCE,
            )
            loaded = store.load(key)
            assert loaded is not None and loaded.data == b"kept"
    finally:
        server.kill()


def test_an_idle_connection_past_descriptor_1023_is_looked_at_not_dialled_again(
    private_memcached: MemcachedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy server holds more than a thousand descriptors; select() can't take one
    past 1023, and a look that failed would dial again after every idle second."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the descriptor limit ({hard}) is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler: list[int] = []
    try:
        while not filler or filler[-1] < 1024:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        monkeypatch.setattr(_held, "IDLE", 0.0)  # look before every command
        with MemcachedStore.from_url(private_memcached.url) as store:
            key = new_key()
            assert store.save(key, make_record(b"kept"), expected_version=None)
            before = _connections(private_memcached, "total_connections")
            for _ in range(5):
                loaded = store.load(key)
                assert loaded is not None and loaded.data == b"kept"
            # One more: the question's own.
            assert _connections(private_memcached, "total_connections") == before + 1
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_restart_between_requests_costs_no_failed_request(
    private_memcached: MemcachedServer,
) -> None:
    """Memcached keeps nothing across a restart: the session reads as gone, not as an
    error, once its connection has sat idle for a second."""
    with MemcachedStore.from_url(private_memcached.url) as store:
        key = new_key()
        assert store.save(key, make_record(b"before"), expected_version=None)
        private_memcached.kill()
        private_memcached.start()
        time.sleep(1.1)
        assert store.load(key) is None
        assert store.save(key, make_record(b"after"), expected_version=None)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_forked_child_never_shares_its_parents_connection(
    private_memcached: MemcachedServer,
) -> None:
    with MemcachedStore.from_url(private_memcached.url) as store:
        check_a_forked_child_reads_its_own(store)


@pytest.fixture
def held(private_memcached: MemcachedServer) -> Iterator[Held]:
    client = PooledClient(("127.0.0.1", private_memcached.port), default_noreply=False)
    try:
        yield Held(client)
    finally:
        client.close()


@pytest.mark.parametrize(
    "key", ["has space", "x" * 251, "caf\u00e9", "tab\there", "new\nline"], ids=repr
)
def test_a_key_memcached_cant_take_is_refused_by_pymemcache(held: Held, key: str) -> None:
    with pytest.raises(MemcacheIllegalInputError):
        held.gets_many([key])
    with pytest.raises(MemcacheIllegalInputError):
        held.add(key, b"x", expire=60)
    with pytest.raises(MemcacheIllegalInputError):
        held.cas(key, b"x", b"1", expire=60)


def test_each_command_answers_as_pymemcaches_does(
    held: Held, private_memcached: MemcachedServer
) -> None:
    client = PooledClient(("127.0.0.1", private_memcached.port), default_noreply=False)
    try:
        assert held.add("k", b"one", expire=60) is True
        assert held.add("k", b"again", expire=60) is False
        found = held.gets_many(["k", "missing"])
        assert found == client.gets_many(["k", "missing"])
        value, token = found["k"]
        assert value == b"one"
        assert held.cas("k", b"two", token, expire=60) is True
        assert held.cas("k", b"three", token, expire=60) is False  # changed since
        assert held.cas("gone", b"x", token, expire=60) is None
        assert client.get("k") == b"two"
    finally:
        client.close()


def test_no_key_asks_nothing(held: Held, through_pymemcache: list[str]) -> None:
    assert held.gets_many([]) == {}
    assert through_pymemcache == []
