"""The Redis store's request path on connections it holds (docs/stores/redis.rst).

The store's GET, SET and EVALSHA skip redis-py's client layer on a connection of the
pool it made, one per thread: each reply must be its own command's, whatever happened
to the one before (a timeout, a server that closed the connection, an error reply, a
fork); a thread that ends gives its connection back; a capped pool or a client the
application made go through the client.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import (
    PATIENCE,
    SERVER,
    check_a_forked_child_reads_its_own,
    check_a_late_reply_is_never_read,
    check_close_waits_for_a_command,
    check_threads_read_their_own,
    check_threads_that_end_hand_on,
    free_ports,
    server_url,
    unreachable,
    wait_until,
)
from tests.redis_servers import RedisServer, running, sentinel_of
from tests.tcp_proxy import SlowReplies
from wsgisession.errors import StoreError
from wsgisession.stores import _redis_direct, _redis_scripts
from wsgisession.stores.base import CorruptRecord
from wsgisession.stores.redis import RedisStore
from wsgisession.testing import make_record, new_key

pytestmark = SERVER


@pytest.fixture
def url() -> str:
    url = server_url("redis")
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        unreachable(url, exc)
    return url


@pytest.fixture
def prefix(url: str) -> Iterator[str]:
    prefix = f"direct-{uuid.uuid4().hex[:12]}:"
    yield prefix
    with redis.Redis.from_url(url) as client:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)


@pytest.fixture
def through_client(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every command sent through redis-py's client layer from now on."""
    names: list[str] = []
    original = redis.Redis.execute_command

    def execute_command(self: redis.Redis, *args: Any, **options: Any) -> Any:
        names.append(str(args[0]))
        return original(self, *args, **options)

    def execute(self: redis.client.Pipeline, raise_on_error: bool = True) -> Any:
        names.append("pipeline")
        return pipeline_execute(self, raise_on_error)

    pipeline_execute = redis.client.Pipeline.execute
    monkeypatch.setattr(redis.Redis, "execute_command", execute_command)
    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    return names


def _every_kind_of_request(store: RedisStore) -> None:
    key, user_key = new_key(), new_key()
    assert store.save(key, make_record(b"one"), expected_version=None)  # SET NX
    assert store.save(key, make_record(b"two", version=2), expected_version=1)  # EVALSHA
    assert store.save(user_key, make_record(user_id="ann"), expected_version=None)
    big = make_record(b"x" * _redis_scripts.STAGE_AT, version=3)
    assert store.save(key, big, expected_version=2)  # SET and EVALSHA, pipelined
    loaded = store.load(key)  # GET
    assert loaded is not None and loaded.data == big.data
    assert store.refresh(key, time.time() + 7200, time.time())
    assert store.delete(key)
    assert store.load(key) is None


def test_the_request_path_of_a_store_from_a_url_skips_the_client(
    url: str, prefix: str, through_client: list[str]
) -> None:
    with RedisStore.from_url(url, key_prefix=prefix) as store:
        _every_kind_of_request(store)
    assert through_client == []


@pytest.mark.parametrize("how", ["given a client", "capped pool", "observed"])
def test_other_clients_go_through_the_client(
    how: str,
    url: str,
    prefix: str,
    through_client: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if how == "given a client":
        # The application's client: its pool may be shared and capped by others.
        store = RedisStore(redis.Redis.from_url(url), key_prefix=prefix)
    elif how == "capped pool":
        store = RedisStore.from_url(url, key_prefix=prefix, max_connections=4)
    else:
        # redis-py's own metrics would miss the commands.
        monkeypatch.setattr(_redis_direct, "_observed", lambda: True)
        store = RedisStore.from_url(url, key_prefix=prefix)
    with store:
        _every_kind_of_request(store)
    assert {"GET", "SET", "EVALSHA", "pipeline"} <= set(through_client)


def test_concurrent_threads_each_read_their_own_records(
    url: str, prefix: str, through_client: list[str]
) -> None:
    """Each thread on a connection of its own: none goes through the client."""
    with RedisStore.from_url(url, key_prefix=prefix) as store:
        check_threads_read_their_own(store)
    assert through_client == []


def _connected(client: redis.Redis) -> int:
    clients: dict[str, Any] = client.info("clients")
    return int(clients["connected_clients"])


def test_a_thread_that_ends_gives_its_connection_back(private_redis: RedisServer) -> None:
    with (
        RedisStore.from_url(private_redis.url) as store,
        redis.Redis.from_url(private_redis.url) as watcher,
    ):
        check_threads_that_end_hand_on(store, lambda: _connected(watcher))


def test_close_waits_for_a_command_under_way_then_gives_each_connection_back(
    private_redis: RedisServer,
) -> None:
    with (
        SlowReplies(("127.0.0.1", private_redis.port)) as proxy,
        redis.Redis.from_url(private_redis.url) as watcher,
    ):
        store = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        check_close_waits_for_a_command(store, proxy, lambda: _connected(watcher), 1)


def test_a_reply_that_comes_too_late_is_never_read_as_the_next_commands(
    url: str, prefix: str
) -> None:
    target = redis.Redis.from_url(url).connection_pool.connection_kwargs
    with SlowReplies((target["host"], target["port"])) as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}/{target.get('db', 0)}"
        with RedisStore.from_url(proxied, key_prefix=prefix, socket_timeout=0.3) as store:
            check_a_late_reply_is_never_read(store, proxy)


def test_a_connection_the_server_closed_is_dialled_again(private_redis: RedisServer) -> None:
    with RedisStore.from_url(private_redis.url) as store:
        key = new_key()
        assert store.save(key, make_record(b"kept"), expected_version=None)
        assert store.load(key) is not None
        with private_redis.client() as admin:
            # Every other client's connection: the store's held one among them.
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"kept"


def test_an_error_reply_leaves_the_connection_as_it_is(
    url: str, prefix: str, sent: list[str]
) -> None:
    with RedisStore.from_url(url, key_prefix=prefix) as store:
        key = new_key()
        assert store.load(key) is None  # the held connection, connected
        with redis.Redis.from_url(url) as admin:
            admin.hset(prefix + key, "field", "value")
        sent.clear()
        with pytest.raises(CorruptRecord):
            store.load(key)
        assert store.load(new_key()) is None
        # No new connection's handshake (HELLO, CLIENT SETINFO) between the two.
        assert sent == ["GET", "GET"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_forked_child_never_shares_its_parents_connection(url: str, prefix: str) -> None:
    with RedisStore.from_url(url, key_prefix=prefix) as store:
        check_a_forked_child_reads_its_own(store)


def test_a_connection_the_server_closed_while_idle_costs_no_retry(tmp_path: Path) -> None:
    """With no retries at all, as through the client, whose pool checks a connection
    it hands out."""
    server = RedisServer(tmp_path / "idle", free_ports(1)[0], "--timeout", "1")
    with running(server), RedisStore.from_url(server.url, retries=0) as store:
        key = new_key()
        assert store.save(key, make_record(b"kept"), expected_version=None)
        time.sleep(2.5)  # the server drops connections idle for a second
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"kept"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_child_forked_while_another_thread_sends_closes_and_works(url: str, prefix: str) -> None:
    with RedisStore.from_url(url, key_prefix=prefix) as store:
        key = new_key()
        assert store.save(key, make_record(b"shared"), expected_version=None)
        stop = threading.Event()

        def busy() -> None:
            while not stop.is_set():
                store.load(key)

        thread = threading.Thread(target=busy)
        thread.start()
        try:
            for _ in range(10):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child reports through its exit code
                    signal.alarm(5)  # a child stuck on its parent's lock dies of it
                    record = store.load(key)
                    store.close()
                    os._exit(0 if record is not None and record.data == b"shared" else 1)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0
        finally:
            stop.set()
            thread.join()


def test_after_a_sentinel_failover_saves_reach_the_new_master(tmp_path: Path) -> None:
    master_port, replica_port, sentinel_port = free_ports(3)
    master = RedisServer(tmp_path, master_port)
    replica = RedisServer(tmp_path, replica_port, "--replicaof", "127.0.0.1", str(master_port))
    sentinel = sentinel_of(
        tmp_path, sentinel_port, master_port, down_after_ms=1000, failover_timeout_ms=5000
    )
    url = f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0"
    with running(master), running(replica), running(sentinel):
        watcher = redis.Redis(port=sentinel_port, socket_timeout=2)
        wait_until(
            "the sentinel to see the replica",
            lambda: bool(watcher.sentinel_slaves("mymaster")),
            PATIENCE,
        )
        with RedisStore.from_url(url) as store:
            key = new_key()
            assert store.save(key, make_record(b"v1"), expected_version=None)
            assert store.load(key) is not None  # the held connection, on the master
            wait_until(
                "the replica to catch up",
                lambda: replica.client().get(store.key_prefix + key) is not None,
                PATIENCE,
            )
            watcher.execute_command("SENTINEL FAILOVER", "mymaster")
            wait_until(
                "the old master to serve as a replica",
                lambda: master.client().role()[0] == b"slave",
                PATIENCE,
            )
            version, failures = 1, 0
            for _ in range(5):
                try:
                    saved = store.save(
                        key, make_record(b"v2", version=version + 1), expected_version=version
                    )
                except StoreError:
                    failures += 1  # a command in flight as the master changed
                    continue
                assert saved
                break
            # At most the command that found the old master demoted fails.
            assert failures <= 1
            loaded = store.load(key)
            assert loaded is not None and loaded.data == b"v2"
            assert replica.client().role()[0] == b"master"
        watcher.close()
