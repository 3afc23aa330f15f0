"""The Redis store's save lock: a lease beside the session in its slot, a line served
in the order it asked, holders and waiters that die, and the Cluster's locked moves.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from tests.helpers import (
    PATIENCE,
    SERVER,
    fail_script,
    in_thread,
    open_test_store,
    other_slot,
    redis_lock_keys,
    redis_user_key,
    wait_until,
)
from tests.redis_servers import RedisServer
from wsgisession.errors import StoreError
from wsgisession.stores import _redis_lock, _redis_lua
from wsgisession.stores.base import LockTimeout, Record
from wsgisession.stores.redis import RedisStore
from wsgisession.testing import make_record, make_tombstone, new_key


def _lock_debris(store: RedisStore) -> list[bytes]:
    """Every lock, line and baton key under the store's prefix."""
    return sorted(store.client.scan_iter(match=store.key_prefix + "l:*"))


def _bumped(record: Record, **changes: object) -> Record:
    data = json.loads(record.data)
    data.update(changes)
    return make_record(json.dumps(data).encode(), version=record.version + 1)


@pytest.fixture
def quick(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisStore]:
    """A store on the shared server whose short socket timeout makes its waiters look
    for a dead holder every 0.2 s, which also shows a block staying under it."""
    for store in open_test_store("redis", request, tmp_path, socket_timeout=0.4):
        assert isinstance(store, RedisStore)
        yield store


@SERVER
def test_the_lock_lives_beside_the_session_in_its_slot_and_goes_with_the_save(
    indexed: RedisStore,
) -> None:
    client = indexed.client
    key = new_key()
    assert indexed.save(key, make_record(b'{"n": 0}'), expected_version=None)
    lock, line = redis_lock_keys(indexed, key)
    seen: dict[str, Any] = {}

    def build(current: Record) -> Record:
        seen.update(holder=client.get(lock), ttl=client.pttl(lock), count=indexed.count())
        return _bumped(current, n=1)

    assert indexed.save_locked(key, build, timeout=PATIENCE) is not None
    assert seen["holder"] is not None
    assert 0 < seen["ttl"] <= _redis_lock._LEASE * 1000
    assert seen["count"] == 1, "the lock key was counted as a session"
    assert _lock_debris(indexed) == []
    if isinstance(client, RedisCluster):
        slot = client.keyslot(indexed.key_prefix + key)
        assert client.keyslot(lock) == client.keyslot(line) == slot
        assert client.keyslot(f"{lock}:0123456789abcdef") == slot


@SERVER
def test_a_plain_save_fails_while_a_lease_is_live_in_its_one_round_trip(
    private_redis: RedisServer, sent: list[str]
) -> None:
    """Refreshes and deletes are not held back; a logout never waits for a save."""
    with RedisStore.from_url(private_redis.url) as store:
        key = new_key()
        assert store.save(key, make_record(), expected_version=None)
        assert store.save(key, make_record(version=2), expected_version=1)  # loads the script
        lock, _ = redis_lock_keys(store, key)
        store.client.set(lock, "another-caller", px=60_000)
        sent.clear()
        assert not store.save(key, make_record(version=3), expected_version=2)
        assert sent == ["EVALSHA"]
        assert store.refresh(key, time.time() + 7200, time.time())
        assert store.delete(key)
        assert store.client.get(lock) == b"another-caller"


@SERVER
def test_a_locked_save_alone_is_two_round_trips(
    private_redis: RedisServer, sent: list[str]
) -> None:
    """Taking the lock returns the session; the write hands the lock on as it writes."""
    with RedisStore.from_url(private_redis.url) as store:
        key = new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)
        assert store.save_locked(key, lambda c: _bumped(c, a=1), timeout=PATIENCE)
        sent.clear()
        assert store.save_locked(key, lambda c: _bumped(c, b=2), timeout=PATIENCE)
        assert sent == ["EVALSHA", "EVALSHA"]
        loaded = store.load(key)
        assert loaded is not None and json.loads(loaded.data) == {"a": 1, "b": 2}
        assert _lock_debris(store) == []


@SERVER
def test_waiters_are_served_in_the_order_they_asked(indexed: RedisStore) -> None:
    client = indexed.client
    key = new_key()
    assert indexed.save(key, make_record(b"{}"), expected_version=None)
    _, line = redis_lock_keys(indexed, key)
    holding, release = threading.Event(), threading.Event()
    served: list[int] = []

    def first(current: Record) -> Record:
        holding.set()
        release.wait(PATIENCE)
        return _bumped(current, first=True)

    threads = [in_thread(lambda: indexed.save_locked(key, first, timeout=PATIENCE))]
    assert holding.wait(PATIENCE)
    for n in range(6):

        def build(current: Record, n: int = n) -> Record:
            served.append(n)
            return _bumped(current, **{f"w{n}": True})

        threads.append(in_thread(lambda b=build: indexed.save_locked(key, b, timeout=PATIENCE)))
        wait_until(f"waiter {n} in line", lambda n=n: client.llen(line) == n + 1)
    release.set()
    for thread, outcome in threads:
        thread.join(PATIENCE)
        assert len(outcome) == 1 and isinstance(outcome[0], Record), outcome
    assert served == list(range(6))
    loaded = indexed.load(key)
    assert loaded is not None and loaded.version == 8
    assert _lock_debris(indexed) == []


@SERVER
def test_a_holder_that_died_is_taken_over_once_its_lease_runs_out(quick: RedisStore) -> None:
    key = new_key()
    assert quick.save(key, make_record(b"{}"), expected_version=None)
    lock, _ = redis_lock_keys(quick, key)
    quick.client.set(lock, "dead-holder", px=300)
    built: list[Record] = []

    def build(current: Record) -> Record:
        built.append(current)
        return _bumped(current, after=True)

    assert quick.save_locked(key, build, timeout=PATIENCE) is not None
    assert len(built) == 1
    loaded = quick.load(key)
    assert loaded is not None and json.loads(loaded.data) == {"after": True}
    assert _lock_debris(quick) == []


@SERVER
def test_a_waiter_that_died_in_line_costs_one_lease(
    quick: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock is handed to the dead waiter, whose lease then runs out in turn."""
    monkeypatch.setattr(_redis_lock, "_LEASE", 0.3)
    key = new_key()
    assert quick.save(key, make_record(b"{}"), expected_version=None)
    lock, line = redis_lock_keys(quick, key)
    quick.client.set(lock, "dead-holder", px=300)
    quick.client.rpush(line, "dead-waiter")
    assert quick.save_locked(key, lambda c: _bumped(c, n=1), timeout=PATIENCE) is not None
    # Only the baton nobody took is left, until its lease runs out.
    baton = f"{lock}:dead-waiter".encode()
    assert _lock_debris(quick) in ([], [baton])
    assert quick.client.pttl(baton) in (-2, *range(1, 301))


@SERVER
def test_a_holder_whose_lease_ran_out_starts_over_and_builds_again(quick: RedisStore) -> None:
    key = new_key()
    assert quick.save(key, make_record(b"{}"), expected_version=None)
    lock, _ = redis_lock_keys(quick, key)
    builds: list[int] = []

    def build(current: Record) -> Record:
        builds.append(current.version)
        if len(builds) == 1:
            # Its lease ran out meanwhile, and another caller took the lock over.
            quick.client.set(lock, "usurper", px=300)
        return _bumped(current, builds=len(builds))

    written = quick.save_locked(key, build, timeout=PATIENCE)
    assert builds == [1, 1]
    assert written is not None
    loaded = quick.load(key)
    assert loaded is not None and (json.loads(loaded.data), loaded.version) == ({"builds": 2}, 2)


@SERVER
def test_a_lock_timeout_masks_the_password_and_leaves_the_line(
    private_redis: RedisServer,
) -> None:
    with private_redis.client() as admin:
        admin.config_set("requirepass", "s3cret-pw")
    url = f"redis://:s3cret-pw@127.0.0.1:{private_redis.port}/0"
    with RedisStore.from_url(url) as store:
        key = new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)
        lock, line = redis_lock_keys(store, key)
        store.client.set(lock, "another-caller", px=60_000)

        def build(current: Record) -> Record:
            raise AssertionError("built without the lock")

        with pytest.raises(LockTimeout) as info:
            store.save_locked(key, build, timeout=0.3)
        message = str(info.value)
        assert "s3cret-pw" not in message and "redis://:***@" in message
        assert key[:8] in message and key[8:16] not in message
        assert store.client.exists(line) == 0
        assert _lock_debris(store) == [lock.encode()]


@SERVER
def test_a_waiter_whose_server_fails_leaves_the_line(
    shared: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = shared.client
    key = new_key()
    assert shared.save(key, make_record(b"{}"), expected_version=None)
    lock, line = redis_lock_keys(shared, key)
    client.set(lock, "another-caller", px=60_000)

    def blpop(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("connection reset while blocked")

    monkeypatch.setattr(client, "blpop", blpop)
    with pytest.raises(StoreError, match="connection reset"):
        shared.save_locked(key, lambda c: _bumped(c), timeout=PATIENCE)
    assert client.exists(line) == 0


@SERVER
def test_cluster_regenerate_leaves_a_tombstone_across_slots(cluster: RedisStore) -> None:
    for replaces_version in (None, 1):
        old = new_key()
        new = other_slot(cluster, old)
        assert cluster.save(old, make_record(b"old", user_id="u"), expected_version=None)
        assert cluster.save(
            new,
            make_record(b"new", user_id="u"),
            expected_version=None,
            replaces=old,
            replaces_version=replaces_version,
            tombstone=make_tombstone(),
        )
        stone = cluster.load(old)
        assert stone is not None and (stone.version, stone.user_id) == (0, None)
        assert [k for k, _ in cluster.user_records("u")] == [new]
        assert cluster.delete(new)


@SERVER
def test_cluster_locked_move_vacates_the_old_key_then_writes_the_new(
    cluster: RedisStore,
) -> None:
    old = new_key()
    new = other_slot(cluster, old)
    assert cluster.save(old, make_record(b'{"a": 1}', user_id="u"), expected_version=None)
    written = cluster.save_locked(
        old,
        lambda c: make_record(c.data, user_id="u"),
        timeout=PATIENCE,
        moves_to=new,
        tombstone=make_tombstone(),
    )
    assert written is not None
    stone = cluster.load(old)
    assert stone is not None and stone.version == 0
    loaded = cluster.load(new)
    assert loaded is not None and loaded.data == b'{"a": 1}'
    assert cluster.client.zrange(redis_user_key(cluster, "u"), 0, -1) == [new.encode()]
    assert _lock_debris(cluster) == []


@SERVER
def test_cluster_locked_move_failing_between_its_steps_loses_the_session(
    cluster: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a regenerate: the tombstone stays, the new key is never written, the lock goes."""
    old = new_key()
    new = other_slot(cluster, old)
    assert cluster.save(old, make_record(b"{}", user_id="u"), expected_version=None)
    fail_script(cluster, monkeypatch, _redis_lua.SAVE, "node of the new key down")
    with pytest.raises(StoreError, match="node of the new key down"):
        cluster.save_locked(
            old,
            lambda c: make_record(c.data, user_id="u"),
            timeout=PATIENCE,
            moves_to=new,
            tombstone=make_tombstone(),
        )
    stone = cluster.load(old)
    assert stone is not None and stone.version == 0
    assert cluster.load(new) is None
    assert cluster.user_records("u") == []
    assert _lock_debris(cluster) == []


@SERVER
def test_cluster_with_a_hash_tag_prefix_keeps_everything_in_one_slot(
    redis_cluster_url: str,
) -> None:
    prefix = f"{{t{uuid.uuid4().hex[:8]}}}:"
    store = RedisStore.from_url(redis_cluster_url, key_prefix=prefix)
    try:
        key = new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)
        assert store.save_locked(key, lambda c: _bumped(c, n=1), timeout=PATIENCE)
        loaded = store.load(key)
        assert loaded is not None and json.loads(loaded.data) == {"n": 1}
    finally:
        for name in list(store.client.scan_iter(match=prefix + "*")):
            store.client.delete(name)
        store.close()
