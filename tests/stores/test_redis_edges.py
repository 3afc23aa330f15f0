"""RedisStore at the edges: numbers through Lua, odd user ids, TTLs, old layouts, Cluster."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import SERVER, open_test_store
from tests.redis_servers import RedisServer
from wsgisession.stores import redis as redis_module
from wsgisession.stores.base import Record
from wsgisession.stores.redis import RedisStore
from wsgisession.testing import make_record, new_key


@pytest.fixture
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisStore]:
    for store in open_test_store("redis", request, tmp_path):
        assert isinstance(store, RedisStore)
        yield store


@pytest.fixture(params=["redis", pytest.param("redis-cluster", id="cluster")])
def indexed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisStore]:
    for store in open_test_store(request.param, request, tmp_path):
        assert isinstance(store, RedisStore)
        yield store


def _user_key(store: RedisStore, user_id: str) -> str:
    return store.key_prefix + "u:" + user_id.encode().hex()


# -- numbers through Lua ------------------------------------------------------------


@SERVER
def test_version_beyond_2_53_compare_and_set(shared: RedisStore) -> None:
    """Versions are compared exactly, even where a Lua double would merge neighbours."""
    big = 2**53
    key = new_key()
    assert shared.save(key, make_record(b"a", version=big + 1), expected_version=None)
    assert not shared.save(key, make_record(b"b", version=big + 1), expected_version=big)


# -- refresh -------------------------------------------------------------------------


@SERVER
def test_refresh_never_shortens_redis_ttl(shared: RedisStore) -> None:
    key = new_key()
    name = shared.key_prefix + key
    assert shared.save(key, make_record(ttl=7200), expected_version=None)
    before = shared.client.pttl(name)
    assert shared.refresh(key, time.time() + 60, time.time() + 1)
    assert shared.client.pttl(name) > before - 2000
    loaded = shared.load(key)
    assert loaded is not None and loaded.expires_at > time.time() + 7000


@SERVER
def test_redis_ttl_follows_the_application_clock(
    shared: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application clock far from the server's still gives Redis the right TTL."""
    skew = 100_000.0
    real = time.time
    monkeypatch.setattr(redis_module.time, "time", lambda: real() + skew)
    key = new_key()
    name = shared.key_prefix + key
    now = real() + skew
    record = Record(b"x", 1, now, now + 600, now)
    assert shared.save(key, record, expected_version=None)
    assert abs(shared.client.pttl(name) - 600_000) < 2000
    assert shared.load(key) == record
    assert shared.refresh(key, now + 1200, now)
    assert abs(shared.client.pttl(name) - 1_200_000) < 2000


# -- user ids --------------------------------------------------------------------------


@SERVER
@pytest.mark.parametrize(
    "user_id",
    [
        pytest.param("a\x00b\nc.%", id="nul-newline-pattern-chars"),
        pytest.param("\U0001f600" * 5000, id="long-astral"),
    ],
)
def test_odd_user_ids_index_like_python(indexed: RedisStore, user_id: str) -> None:
    client = indexed.client
    old, new = new_key(), new_key()
    assert indexed.save(old, make_record(user_id=user_id), expected_version=None)
    assert client.zrange(_user_key(indexed, user_id), 0, -1) == [old.encode()]
    assert indexed.refresh(old, time.time() + 7200, time.time())
    assert indexed.save(
        new, make_record(user_id=user_id), expected_version=None, replaces=old, replaces_version=1
    )
    assert [k for k, _ in indexed.user_records(user_id)] == [new]
    assert indexed.delete(new)
    assert client.exists(_user_key(indexed, user_id)) == 0


@SERVER
def test_an_empty_user_id_goes_through_the_scripts(indexed: RedisStore) -> None:
    """A zero-length user id: GETRANGE 44..43 reads '' and the set is ``<prefix>u:``."""
    client = indexed.client
    old, new = new_key(), new_key()
    assert indexed.save(old, make_record(user_id=""), expected_version=None)
    assert client.zrange(_user_key(indexed, ""), 0, -1) == [old.encode()]
    assert indexed.refresh(old, time.time() + 7200, time.time())
    assert indexed.save(
        new, make_record(user_id=""), expected_version=None, replaces=old, replaces_version=1
    )
    assert [k for k, _ in indexed.user_records("")] == [new]
    assert indexed.count() == 1
    assert indexed.save(new, make_record(version=2), expected_version=1)
    assert client.exists(_user_key(indexed, "")) == 0


# -- old layout --------------------------------------------------------------------------


@SERVER
def test_regenerate_from_an_old_hash_with_a_version_is_refused(indexed: RedisStore) -> None:
    """A hash under the replaced key is not a live record: nothing is written or deleted."""
    client = indexed.client
    old, new = new_key(), new_key()
    name = indexed.key_prefix + old
    client.hset(name, mapping={"data": b"x", "version": 1, "expires_at": 2e9})
    assert not indexed.save(
        new, make_record(), expected_version=None, replaces=old, replaces_version=1
    )
    assert client.type(name) == b"hash"
    assert indexed.load(new) is None


# -- NOSCRIPT ------------------------------------------------------------------------------


@SERVER
def test_script_flush_mid_life_is_recovered(private_redis: RedisServer) -> None:
    with RedisStore.from_url(private_redis.url) as store:
        key = new_key()
        assert store.save(key, make_record(user_id="ann"), expected_version=None)
        client = store.client
        assert isinstance(client, redis.Redis)
        for step in (
            lambda: store.save(key, make_record(version=2, user_id="ann"), expected_version=1),
            lambda: store.refresh(key, time.time() + 7200, time.time()),
            lambda: [k for k, _ in store.user_records("ann")] == [key],
            lambda: store.delete(key),
        ):
            client.script_flush()
            assert step()


@SERVER
def test_script_flush_on_cluster_is_recovered(redis_cluster_url: str) -> None:
    store = RedisStore.from_url(redis_cluster_url, key_prefix=f"t{uuid.uuid4().hex[:8]}:")
    try:
        client: Any = store.client
        keys = [new_key() for _ in range(6)]
        for key in keys:
            assert store.save(key, make_record(user_id="ann"), expected_version=None)
        client.script_flush()
        for key in keys:
            assert store.save(key, make_record(version=2, user_id="ann"), expected_version=1)
        assert sorted(k for k, _ in store.user_records("ann")) == sorted(keys)
    finally:
        for name in list(store.client.scan_iter(match=store.key_prefix + "*")):
            store.client.delete(name)
        store.close()


@SERVER
def test_old_hashes_are_misses_for_reads_on_every_deployment(indexed: RedisStore) -> None:
    """load, count and user_records (a pipelined GET) skip a hash, on Cluster too."""
    client = indexed.client
    live, old = new_key(), new_key()
    assert indexed.save(live, make_record(user_id="ann"), expected_version=None)
    assert indexed.save(old, make_record(user_id="ann"), expected_version=None)
    client.delete(indexed.key_prefix + old)
    client.hset(indexed.key_prefix + old, mapping={"version": 1, "expires_at": 2e9})
    assert indexed.load(old) is None
    assert indexed.count() == 1
    assert [k for k, _ in indexed.user_records("ann")] == [live]
    assert client.zrange(_user_key(indexed, "ann"), 0, -1) == [live.encode()]
    # A new session can be saved over it, and a regenerate can land on it.
    fresh = new_key()
    client.hset(indexed.key_prefix + fresh, mapping={"version": 1})
    assert indexed.save(
        fresh,
        make_record(user_id="ann"),
        expected_version=None,
        replaces=live,
        replaces_version=1,
    )
    assert indexed.load(live) is None
    assert [k for k, _ in indexed.user_records("ann")] == [fresh]
