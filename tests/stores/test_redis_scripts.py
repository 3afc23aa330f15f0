"""What the Redis store's Lua scripts do at their edges: versions beyond 2**53, TTLs
that never shorten and always fit, the application's clock, old layouts, a flushed
script cache, and values they can't read.
"""

from __future__ import annotations

import logging
import math
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from werkzeug.wrappers import Request

from tests.helpers import (
    SERVER,
    body,
    key_of,
    make_client,
    redis_user_key,
)
from tests.redis_servers import RedisServer
from wsgisession import Session, _clock
from wsgisession.events import SessionEvent
from wsgisession.stores import _redis_scripts
from wsgisession.stores.base import CorruptRecord, Record
from wsgisession.stores.redis import RedisStore
from wsgisession.testing import make_record, new_key

#: Ten years, the longest duration the middleware accepts.
TEN_YEARS = 315_360_000


#: A user id no log line or message has any business quoting.
USER = "Qz9-user"


# -- numbers through Lua -----------------------------------------------------------------


@SERVER
def test_version_beyond_2_53_compare_and_set(shared: RedisStore) -> None:
    """Versions are compared exactly, even where a Lua double would merge neighbours."""
    big = 2**53
    key = new_key()
    assert shared.save(key, make_record(b"a", version=big + 1), expected_version=None)
    assert not shared.save(key, make_record(b"b", version=big + 1), expected_version=big)


# -- TTLs --------------------------------------------------------------------------------


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


def test_ttl_ms_is_always_a_ttl_redis_takes() -> None:
    now = time.time()
    assert abs(_redis_scripts.ttl_ms(now + TEN_YEARS, now) - TEN_YEARS * 1000) <= 1
    for far in (now + 1e14, now + 1e20, 1e300, math.inf):
        assert _redis_scripts.ttl_ms(far, now) == _redis_scripts.MAX_TTL_MS
    for gone in (now, now - 1, -math.inf, math.nan):
        assert _redis_scripts.ttl_ms(gone, now) == 0


@SERVER
@pytest.mark.parametrize("skew", [0, TEN_YEARS], ids=["clock-right", "clock-ten-years-ahead"])
def test_a_record_expiring_in_ten_years_gets_valid_ttls_everywhere(
    indexed: RedisStore, monkeypatch: pytest.MonkeyPatch, skew: int
) -> None:
    """Save, refresh, locked save, regenerate with a tombstone, the user set's TTL."""
    real = time.time
    monkeypatch.setattr(_clock, "now", lambda: real() + skew)
    now = real() + skew
    client = indexed.client
    key, new = new_key(), new_key()
    far = now + TEN_YEARS
    assert indexed.save(key, Record(b"{}", 1, now, far, now, USER), expected_version=None)
    for name in (indexed.key_prefix + key, redis_user_key(indexed, USER)):
        assert abs(client.pttl(name) - TEN_YEARS * 1000) < 5000
    assert indexed.refresh(key, far + 60, now + 1)
    assert abs(client.pttl(indexed.key_prefix + key) - (TEN_YEARS + 60) * 1000) < 5000
    written = indexed.save_locked(
        key, lambda c: Record(c.data, c.version + 1, now, far, now, USER), timeout=30
    )
    assert written is not None
    assert indexed.save(
        new,
        Record(b"{}", 1, now, far, now, USER),
        expected_version=None,
        replaces=key,
        replaces_version=2,
        tombstone=Record(b"", 0, now, far, now),
    )
    assert abs(client.pttl(indexed.key_prefix + key) - TEN_YEARS * 1000) < 5000
    assert [k for k, _ in indexed.user_records(USER)] == [new]
    assert indexed.count() == 1
    assert indexed.delete(new)


@SERVER
@pytest.mark.parametrize("far", [1e14, 1e20, math.inf], ids=["1e14-s", "1e20-s", "infinity"])
def test_an_expiry_past_any_duration_caps_the_redis_ttl_instead_of_failing(
    indexed: RedisStore, far: float
) -> None:
    """Redis refuses a TTL past its clock's range, and a Lua number of 1e17 or more."""
    client = indexed.client
    now = time.time()
    key = new_key()
    record = Record(b"{}", 1, now, now + far, now, USER)
    assert indexed.save(key, record, expected_version=None)
    cap = _redis_scripts.MAX_TTL_MS
    for name in (indexed.key_prefix + key, redis_user_key(indexed, USER)):
        assert cap - 5000 < client.pttl(name) <= cap
    assert indexed.load(key) == record
    assert indexed.refresh(key, now + far, now + 1)
    assert indexed.save(key, Record(b"[]", 2, now, now + far, now, USER), expected_version=1)
    assert [k for k, _ in indexed.user_records(USER)] == [key]
    assert indexed.delete(key)


@SERVER
def test_redis_ttl_follows_the_application_clock(
    shared: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application clock far from the server's still gives Redis the right TTL."""
    skew = 100_000.0
    real = time.time
    monkeypatch.setattr(_clock, "now", lambda: real() + skew)
    key = new_key()
    name = shared.key_prefix + key
    now = real() + skew
    record = Record(b"x", 1, now, now + 600, now)
    assert shared.save(key, record, expected_version=None)
    assert abs(shared.client.pttl(name) - 600_000) < 2000
    assert shared.load(key) == record
    assert shared.refresh(key, now + 1200, now)
    assert abs(shared.client.pttl(name) - 1_200_000) < 2000


# -- old layouts -------------------------------------------------------------------------


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


# -- a flushed script cache --------------------------------------------------------------


@SERVER
def test_script_flush_mid_life_is_recovered(private_redis: RedisServer) -> None:
    with RedisStore.from_url(private_redis.url) as store:
        key = new_key()
        assert store.save(key, make_record(user_id="ann"), expected_version=None)
        client = store.client
        assert isinstance(client, redis.Redis)
        for step in (
            lambda: store.save(key, make_record(version=2, user_id="ann"), expected_version=1),
            # Staged: the error reply comes second in a pipeline, and the connection
            # still reads each later reply as its own command's.
            lambda: store.save(
                key,
                make_record(b"x" * _redis_scripts.STAGE_AT, version=3, user_id="ann"),
                expected_version=2,
            ),
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


# -- values the scripts can't read -------------------------------------------------------


@SERVER
def test_old_hashes_are_corrupt_to_load_and_misses_to_other_reads_everywhere(
    indexed: RedisStore,
) -> None:
    """count and user_records (a pipelined GET) skip a hash, on Cluster too; load
    reports it."""
    client = indexed.client
    live, old = new_key(), new_key()
    assert indexed.save(live, make_record(user_id="ann"), expected_version=None)
    assert indexed.save(old, make_record(user_id="ann"), expected_version=None)
    client.delete(indexed.key_prefix + old)
    client.hset(indexed.key_prefix + old, mapping={"version": 1, "expires_at": 2e9})
    with pytest.raises(CorruptRecord):
        indexed.load(old)
    assert indexed.count() == 1
    assert [k for k, _ in indexed.user_records("ann")] == [live]
    assert client.zrange(redis_user_key(indexed, "ann"), 0, -1) == [live.encode()]
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


_HEAD = _redis_scripts.HEADER.size


#: Where the header keeps the user id's length.
_USER_LENGTH = struct.calcsize(">4sqddd")


def _login(session: Session, request: Request) -> int:
    session.user_id = USER
    session["n"] = 1
    return 1


def _count(session: Session, request: Request) -> int:
    session["n"] = session.get("n", 0) + 1
    n: int = session["n"]
    return n


#: Strings that are no record, made from the value of one a user's session left.
_GARBAGE: dict[str, Callable[[bytes], bytes]] = {
    "unknown-format": lambda v: b"SeCr" + v[4:],
    "short": lambda v: v[:20],
    "cut-in-user-id": lambda v: v[: _HEAD + 2],
    "cut-in-meta": lambda v: v[: _HEAD + len(USER) + 1],
    "bad-user-length": lambda v: v[:_USER_LENGTH] + struct.pack(">i", -7) + v[_USER_LENGTH + 4 :],
    "user-id-not-utf8": lambda v: v.replace(USER.encode(), b"\xff" + USER.encode()[1:], 1),
}


#: What the scripts can't read either: a plain create overwrites it.
_UNREADABLE = ["hash", "list", "unknown-format", "short", "cut-in-user-id"]


def _corrupt(store: RedisStore, key: str, kind: str) -> None:
    """Put garbage of *kind* under *key*, in place of the record there."""
    client: Any = store.client
    name = store.key_prefix + key
    value = client.get(name)
    assert value is not None and _redis_scripts.decode(value).user_id == USER
    client.delete(name)
    if kind == "hash":
        client.hset(name, mapping={"data": b"SeCr", "version": 1, "user_id": USER})
    elif kind == "list":
        client.rpush(name, value)
    else:
        client.set(name, _GARBAGE[kind](value))
    client.pexpire(name, 600_000)


@SERVER
@pytest.mark.parametrize("kind", ["hash", "list", *_GARBAGE])
def test_anything_but_a_record_is_corrupt_to_load_and_the_next_request_replaces_it(
    indexed: RedisStore, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """The middleware counts it, announces it, and deletes it with its fresh session's
    first save; no message or log line quotes what was stored."""
    caplog.set_level(logging.DEBUG, logger="wsgisession")
    events: list[SessionEvent] = []
    client, middleware = make_client(
        {"/login": _login, "/n": _count}, store=indexed, listeners=[events.append]
    )
    assert body(client.get("/login")) == 1
    old = key_of(client)
    _corrupt(indexed, old, kind)
    with pytest.raises(CorruptRecord) as info:
        indexed.load(old)
    assert indexed.user_records(USER) == []
    assert body(client.get("/n")) == 1, "the corrupt record was served"
    assert key_of(client) != old
    assert indexed.client.exists(indexed.key_prefix + old) == 0, "the corrupt record stayed"
    assert middleware.metrics()["corrupt"] == 1
    assert [e.name for e in events].count("corrupt") == 1
    told = str(info.value) + caplog.text
    for quoted in ("SeCr", USER, "Qz9", "\\x", "0x", "-7", old):
        assert quoted not in told


@SERVER
@pytest.mark.parametrize("kind", _UNREADABLE)
def test_a_plain_create_overwrites_what_the_scripts_cannot_read(
    indexed: RedisStore, kind: str
) -> None:
    key = new_key()
    assert indexed.save(key, make_record(user_id=USER), expected_version=None)
    _corrupt(indexed, key, kind)
    assert indexed.count() == 0
    assert not indexed.refresh(key, time.time() + 60, time.time())
    assert not indexed.save(key, make_record(version=2, user_id=USER), expected_version=1)
    assert indexed.save(key, make_record(b"new", user_id=USER), expected_version=None)
    loaded = indexed.load(key)
    assert loaded is not None and loaded.data == b"new"
    assert [k for k, _ in indexed.user_records(USER)] == [key]
