"""The Redis store's user index: a sorted set per user, scored by expiry, with a TTL of
its own; pruned as it is written and read; moved with a session by a user change or a
regenerate, on one server and on the Cluster.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.helpers import (
    SERVER,
    FakeClock,
    fail_script,
    redis_user_key,
)
from tests.redis_servers import RedisServer
from wsgisession.errors import StoreError
from wsgisession.stores import _redis_lua, _redis_scripts
from wsgisession.stores import _redis_reads as redis_reads
from wsgisession.stores.redis import RedisStore
from wsgisession.testing import make_record, new_key


@SERVER
def test_user_index_is_a_sorted_set_scored_by_expiry_with_its_own_ttl(
    indexed: RedisStore,
) -> None:
    client = indexed.client
    user = "ann: *?[x]/\u00e9"
    name = redis_user_key(indexed, user)
    short, long = new_key(), new_key()
    assert indexed.save(short, make_record(ttl=600, user_id=user), expected_version=None)
    record = make_record(ttl=1200, user_id=user)
    assert indexed.save(long, record, expected_version=None)
    assert client.type(name) == b"zset"
    answer: Any = client.zrange(name, 0, -1, withscores=True)
    members = dict(answer)
    assert sorted(members) == sorted([short.encode(), long.encode()])
    assert members[long.encode()] == record.expires_at
    assert abs(client.pttl(name) - (record.expires_at - time.time()) * 1000) < 2000
    # A refresh moves the member's score and the set's TTL with it.
    later = record.expires_at + 3600
    assert indexed.refresh(long, later, time.time())
    assert client.zscore(name, long) == later
    assert abs(client.pttl(name) - (later - time.time()) * 1000) < 2000
    # The sets are not sessions.
    assert indexed.count() == 2
    assert indexed.delete(short) and indexed.delete(long)
    assert client.exists(name) == 0


@SERVER
def test_expired_members_are_pruned_by_the_next_write(indexed: RedisStore) -> None:
    client = indexed.client
    name = redis_user_key(indexed, "ann")
    dead = new_key()
    client.zadd(name, {dead: time.time() - 5})
    live = new_key()
    assert indexed.save(live, make_record(user_id="ann"), expected_version=None)
    assert client.zscore(name, dead) is None
    assert client.zrange(name, 0, -1) == [live.encode()]


@SERVER
def test_the_index_never_grows_without_bound(indexed: RedisStore, clock: FakeClock) -> None:
    """Sessions that expired unseen leave no entries once the user's set is written."""
    client = indexed.client
    name = redis_user_key(indexed, "ann")
    for _ in range(40):
        assert indexed.save(new_key(), make_record(ttl=0.5, user_id="ann"), expected_version=None)
    live = [new_key() for _ in range(3)]
    for key in live:
        assert indexed.save(key, make_record(user_id="ann"), expected_version=None)
    clock.advance(1)
    assert client.zcard(name) > len(live)  # they expired after the set was last written
    assert sorted(k for k, _ in indexed.user_records("ann")) == sorted(live)
    last = new_key()
    assert indexed.save(last, make_record(user_id="ann"), expected_version=None)
    assert client.zcard(name) == len(live) + 1


@SERVER
def test_an_entry_whose_session_went_behind_its_back_is_dropped_when_read(
    indexed: RedisStore,
) -> None:
    """What a Cluster's separate index write leaves behind, or a key Redis evicted."""
    client = indexed.client
    name = redis_user_key(indexed, "ann")
    live, gone, moved = new_key(), new_key(), new_key()
    for key in (live, gone, moved):
        assert indexed.save(key, make_record(user_id="ann"), expected_version=None)
    client.delete(indexed.key_prefix + gone)
    client.set(indexed.key_prefix + moved, _redis_scripts.encode(make_record(user_id="bob")))
    assert [key for key, _ in indexed.user_records("ann")] == [live]
    assert client.zrange(name, 0, -1) == [live.encode()]


@SERVER
def test_reading_keeps_an_entry_a_concurrent_save_renewed(
    indexed: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale entry is dropped only if its score is still the one that was read."""
    key = new_key()
    assert indexed.save(key, make_record(user_id="ann"), expected_version=None)
    assert indexed.save(key, make_record(version=2, user_id="bob"), expected_version=1)
    indexed.client.zadd(redis_user_key(indexed, "ann"), {key: time.time() + 3600})
    decode = redis_reads.decode_quietly

    def racing_decode(name: str, value: bytes | None) -> Any:
        # Between reading the set and pruning it, the session moves back to ann.
        monkeypatch.setattr(redis_reads, "decode_quietly", decode)
        record = make_record(version=3, ttl=7200, user_id="ann")
        assert indexed.save(key, record, expected_version=2)
        return decode(name, value)

    monkeypatch.setattr(redis_reads, "decode_quietly", racing_decode)
    assert indexed.user_records("ann") == []  # it read the session while it was bob's
    assert [k for k, _ in indexed.user_records("ann")] == [key]


@SERVER
def test_a_user_change_and_a_regenerate_move_the_entry(indexed: RedisStore) -> None:
    client = indexed.client
    old, new = new_key(), new_key()
    assert indexed.save(old, make_record(user_id="\u00e9l\u00e8ve"), expected_version=None)
    assert indexed.save(new, make_record(user_id="prof"), expected_version=None, replaces=old)
    assert client.exists(redis_user_key(indexed, "\u00e9l\u00e8ve")) == 0
    assert client.zrange(redis_user_key(indexed, "prof"), 0, -1) == [new.encode()]
    assert indexed.save(new, make_record(version=2), expected_version=1)
    assert client.exists(redis_user_key(indexed, "prof")) == 0


@SERVER
def test_a_long_user_id_moves_with_its_session(indexed: RedisStore) -> None:
    """The scripts read a record's header, then the user id it gives the length of."""
    client = indexed.client
    long = "\u00e9" * 400
    old, new = new_key(), new_key()
    assert indexed.save(old, make_record(user_id=long), expected_version=None)
    assert indexed.refresh(old, time.time() + 7200, time.time())
    assert client.zrange(redis_user_key(indexed, long), 0, -1) == [old.encode()]
    assert indexed.save(new, make_record(user_id=long), expected_version=None, replaces=old)
    assert client.zrange(redis_user_key(indexed, long), 0, -1) == [new.encode()]
    assert indexed.save(new, make_record(version=2, user_id="ann"), expected_version=1)
    assert client.exists(redis_user_key(indexed, long)) == 0
    assert [k for k, _ in indexed.user_records("ann")] == [new]
    assert indexed.save(new, make_record(version=3, user_id=long), expected_version=2)
    assert indexed.delete(new)
    assert client.exists(redis_user_key(indexed, long)) == 0


@SERVER
def test_saves_with_users_are_one_round_trip(private_redis: RedisServer, sent: list[str]) -> None:
    with RedisStore.from_url(private_redis.url) as store:
        warm, old, new, third = new_key(), new_key(), new_key(), new_key()
        assert store.save(warm, make_record(user_id="ann"), expected_version=None)
        assert store.refresh(warm, time.time() + 7200, time.time())
        assert store.delete(warm)
        steps = [
            lambda: store.save(old, make_record(user_id="ann"), expected_version=None),
            lambda: store.save(old, make_record(version=2, user_id="bob"), expected_version=1),
            lambda: store.refresh(old, time.time() + 7200, time.time()),
            lambda: store.save(
                new, make_record(user_id="bob"), expected_version=None, replaces=old
            ),
            lambda: store.save(new, make_record(version=2), expected_version=1),
            lambda: store.save(
                third,
                make_record(user_id="ann"),
                expected_version=None,
                replaces=new,
                replaces_version=2,
            ),
            lambda: store.delete(third),
        ]
        for step in steps:
            sent.clear()
            assert step()
            assert sent == ["EVALSHA"]
        assert store.user_records("ann") == store.user_records("bob") == []


@SERVER
def test_cluster_save_whose_link_fails_raises_and_the_next_save_links_it(
    cluster: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    restore = fail_script(cluster, monkeypatch, _redis_lua.INDEX, "index node down")
    with pytest.raises(StoreError, match="index node down"):
        cluster.save(key, make_record(user_id="ann"), expected_version=None)
    loaded = cluster.load(key)
    assert loaded is not None and loaded.user_id == "ann"
    assert cluster.user_records("ann") == []
    restore()
    assert cluster.save(key, make_record(version=2, user_id="ann"), expected_version=1)
    assert [k for k, _ in cluster.user_records("ann")] == [key]


# -- odd user ids ------------------------------------------------------------------------


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
    assert client.zrange(redis_user_key(indexed, user_id), 0, -1) == [old.encode()]
    assert indexed.refresh(old, time.time() + 7200, time.time())
    assert indexed.save(
        new, make_record(user_id=user_id), expected_version=None, replaces=old, replaces_version=1
    )
    assert [k for k, _ in indexed.user_records(user_id)] == [new]
    assert indexed.delete(new)
    assert client.exists(redis_user_key(indexed, user_id)) == 0


@SERVER
def test_an_empty_user_id_goes_through_the_scripts(indexed: RedisStore) -> None:
    """A zero-length user id: GETRANGE 44..43 reads '' and the set is ``<prefix>u:``."""
    client = indexed.client
    old, new = new_key(), new_key()
    assert indexed.save(old, make_record(user_id=""), expected_version=None)
    assert client.zrange(redis_user_key(indexed, ""), 0, -1) == [old.encode()]
    assert indexed.refresh(old, time.time() + 7200, time.time())
    assert indexed.save(
        new, make_record(user_id=""), expected_version=None, replaces=old, replaces_version=1
    )
    assert [k for k, _ in indexed.user_records("")] == [new]
    assert indexed.count() == 1
    assert indexed.save(new, make_record(version=2), expected_version=1)
    assert client.exists(redis_user_key(indexed, "")) == 0
