"""The Redis store beyond the conformance suite: URLs and options, credentials out of
sight, the record layout, round trips, a server going down, Cluster and Sentinel.

The rest of the Redis store's tests, by behaviour: ``test_redis_scripts.py`` (what
the Lua scripts do with numbers, TTLs, old layouts and values they can't read),
``test_redis_users.py`` (the user index) and ``test_redis_lock.py`` (the save lock).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from redis.cluster import RedisCluster
from redis.connection import SSLConnection, UnixDomainSocketConnection
from redis.sentinel import Sentinel, SentinelConnectionPool
from werkzeug.test import Client

from tests.helpers import (
    SECRET,
    SERVER,
    USER_ROUTES,
    body,
    fail_script,
    free_ports,
    make_client,
    other_slot,
    redis_lock_keys,
    redis_user_key,
    server_url,
    unreachable,
)
from tests.redis_servers import RedisServer, running
from tests.tcp_proxy import TCPProxy
from wsgisession import SessionMiddleware
from wsgisession.config import Config
from wsgisession.errors import ConfigError, StoreError
from wsgisession.stores import _redis_lua, _redis_scripts, _redis_url, open_store
from wsgisession.stores.base import CorruptRecord, LockTimeout, Record
from wsgisession.stores.redis import RedisStore
from wsgisession.testing import make_record, new_key

# -- URLs and options (no server) ----------------------------------------------


def _pool_kwargs(store: RedisStore) -> dict[str, Any]:
    client = store.client
    assert isinstance(client, redis.Redis)
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    return kwargs


def test_redis_url_sets_host_port_db_and_password() -> None:
    with RedisStore.from_url("redis://:pw@example.invalid:6380/3") as store:
        kwargs = _pool_kwargs(store)
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("example.invalid", 6380, 3)
        assert kwargs["password"] == "pw"
        assert kwargs["socket_timeout"] == 5 and kwargs["socket_connect_timeout"] == 5
        assert store.key_prefix == "session:"


def test_rediss_url_uses_tls() -> None:
    with RedisStore.from_url("rediss://example.invalid/0?ssl_cert_reqs=none") as store:
        client = store.client
        assert isinstance(client, redis.Redis)
        assert client.connection_pool.connection_class is SSLConnection
        assert _pool_kwargs(store)["ssl_cert_reqs"] == "none"


def test_unix_url_takes_the_database_from_the_query() -> None:
    with RedisStore.from_url("unix:///run/redis/redis.sock?db=1") as store:
        client = store.client
        assert isinstance(client, redis.Redis)
        assert client.connection_pool.connection_class is UnixDomainSocketConnection
        kwargs = _pool_kwargs(store)
        assert (kwargs["path"], kwargs["db"]) == ("/run/redis/redis.sock", 1)


def test_sentinel_url_names_sentinels_service_and_database() -> None:
    url = "redis+sentinel://u:pw@h1.invalid:26379,h2.invalid:26380/svc/2"
    with RedisStore.from_url(url, sentinel_kwargs={"password": "s"}) as store:
        client = store.client
        assert isinstance(client, redis.Redis)
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "svc"
        assert pool.connection_kwargs["db"] == 2
        assert pool.connection_kwargs["password"] == "pw"
        assert pool.connection_kwargs["username"] == "u"
        sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
        assert [(s["host"], s["port"]) for s in sentinels] == [
            ("h1.invalid", 26379),
            ("h2.invalid", 26380),
        ]
        assert sentinels[0]["password"] == "s"


def test_cluster_url_is_built_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """RedisCluster contacts its nodes when built, so the store defers building it."""
    built: list[dict[str, Any]] = []

    class Built(Exception):
        pass

    def fake_cluster(**kwargs: Any) -> RedisCluster:
        built.append(kwargs)
        raise Built

    monkeypatch.setattr(_redis_url, "RedisCluster", fake_cluster)
    store = RedisStore.from_url("redis+cluster://h1.invalid:7000,h2.invalid:7001", retries=1)
    assert built == []
    with pytest.raises(Built):
        store.ping()
    nodes = [(n.host, n.port) for n in built[0]["startup_nodes"]]
    assert nodes == [("h1.invalid", 7000), ("h2.invalid", 7001)]
    assert built[0]["retry"].get_retries() == 1
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis+sentinel://127.0.0.1:26379", id="sentinel-without-service"),
        pytest.param("redis+sentinel://127.0.0.1:26379/", id="sentinel-empty-service"),
        pytest.param("redis+sentinel://127.0.0.1:26379/svc/x", id="sentinel-bad-db"),
        pytest.param("redis+sentinel://127.0.0.1:26379/svc/1/2", id="sentinel-extra-path"),
        pytest.param("redis+sentinel://h:1,:2/svc", id="sentinel-empty-host"),
        pytest.param("redis+cluster://", id="cluster-without-hosts"),
        pytest.param("redis+cluster://h:70000", id="cluster-port-out-of-range"),
        pytest.param("redis+cluster://h:port", id="cluster-bad-port"),
        pytest.param("redis+cluster://h:7000/3", id="cluster-database"),
        pytest.param("redis+cluster://h:7000?x=1", id="cluster-query"),
        pytest.param("redis://localhost:99999/0", id="port-out-of-range"),
        pytest.param("redis://localhost:abc/0", id="bad-port"),
        pytest.param("redis://localhost/abc", id="bad-db"),
        pytest.param("redis://localhost/0?db=1", id="db-twice"),
        pytest.param("redis://localhost/0?socket_timeout=1", id="unknown-url-parameter"),
        pytest.param("unix://", id="unix-without-path"),
        pytest.param("unix:///tmp/r.sock?db=one", id="unix-bad-db"),
        pytest.param("redis:localhost", id="no-slashes"),
    ],
)
def test_malformed_url_raises_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="store"):
        RedisStore.from_url(url)


def test_a_negative_database_is_refused_as_what_it_is() -> None:
    with pytest.raises(ConfigError, match="the database must be a whole number, 0 or more"):
        RedisStore.from_url("redis://localhost/-1")


def test_config_error_masks_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        open_store("redis://:secretpw@localhost:abc/0")
    assert "secretpw" not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"decode_responses": True}, "decode_responses", id="unknown"),
        pytest.param({"socket_timeout": "5"}, "socket_timeout", id="timeout-as-string"),
        pytest.param({"socket_timeout": 0}, "socket_timeout", id="timeout-zero"),
        pytest.param({"socket_connect_timeout": None}, "socket_connect_timeout", id="none"),
        pytest.param({"health_check_interval": True}, "health_check_interval", id="bool"),
        pytest.param({"retries": -1}, "retries", id="negative-retries"),
        pytest.param({"retry_on_timeout": "yes"}, "retry_on_timeout", id="bool-as-string"),
        pytest.param({"max_connections": 0}, "max_connections", id="no-connections"),
        pytest.param({"key_prefix": 1}, "key_prefix", id="prefix-not-str"),
        pytest.param({"password": b"pw"}, "password", id="password-bytes"),
        pytest.param({"sentinel_kwargs": "x"}, "sentinel_kwargs", id="sentinel-kwargs-type"),
        pytest.param({"sentinel_kwargs": {}}, "sentinel_kwargs", id="sentinel-kwargs-scheme"),
    ],
)
def test_bad_option_raises_config_error_naming_it(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        open_store("redis://localhost:6379/0", **options)


@pytest.mark.parametrize("prefix", ["a}b:", "a{b:", "a{}b:", "}{:"])
def test_cluster_refuses_braces_that_would_part_a_session_from_its_lock(prefix: str) -> None:
    with pytest.raises(ConfigError, match="hash tag"):
        RedisStore.from_url("redis+cluster://:pw@h.invalid:7000", key_prefix=prefix)
    # Elsewhere every key is on the one server: any prefix will do.
    RedisStore.from_url("redis://h.invalid/0", key_prefix=prefix).close()


@pytest.mark.parametrize("prefix", ["s:", "{s}:", "}x{s}:", "{s}{:"])
def test_cluster_takes_a_prefix_without_braces_or_with_a_hash_tag(prefix: str) -> None:
    with RedisStore.from_url("redis+cluster://h.invalid:7000", key_prefix=prefix) as store:
        assert store.key_prefix == prefix


def test_password_in_url_and_option_is_ambiguous() -> None:
    with pytest.raises(ConfigError, match="password"):
        RedisStore.from_url("redis://:a@localhost/0", password="b")


def test_password_option_reaches_sentinel_master() -> None:
    with RedisStore.from_url("redis+sentinel://h.invalid/svc", password="pw") as store:
        assert _pool_kwargs(store)["password"] == "pw"


def test_client_that_decodes_responses_is_refused() -> None:
    client = redis.Redis(decode_responses=True)
    with pytest.raises(ConfigError, match="decode_responses"):
        RedisStore(client)
    client.close()


def test_building_with_a_dead_server_does_not_raise_and_use_raises_store_error() -> None:
    store = open_store("redis://:secretpw@127.0.0.1:1/0", retries=0)
    with store:
        for use in (
            lambda: store.load(new_key()),
            lambda: store.save(new_key(), make_record(), expected_version=None),
            lambda: store.refresh(new_key(), time.time() + 60, time.time()),
            lambda: store.delete(new_key()),
            store.ping,
            store.count,
        ):
            with pytest.raises(StoreError) as info:
                use()
            assert isinstance(info.value.__cause__, redis.RedisError)
            assert "secretpw" not in str(info.value)
            assert "redis://:***@127.0.0.1:1/0" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis+cluster://127.0.0.1:1,127.0.0.1:2", id="cluster"),
        pytest.param("redis+sentinel://127.0.0.1:1/mymaster/0", id="sentinel"),
    ],
)
def test_dead_cluster_or_sentinel_raises_store_error_on_use(url: str) -> None:
    with open_store(url, retries=0) as store:
        with pytest.raises(StoreError):
            store.load(new_key())


# -- credentials out of sight -----------------------------------------------------


#: A password holding what ends a part of a URL, and the pieces of the credentials
#: these tests use that a message might quote (a URL split in the wrong place shows
#: only a piece of its password).
PASSWORD = "s3cr@t:pa/ssw0rd"


_PIECES = ("s3cr", "t:pa", "pa/ss", "pa%2Fss", "ssw0rd", "424242")


def _told(exc: BaseException) -> str:
    """All that a traceback of *exc* shows: its message and every exception chained."""
    return "".join(traceback.format_exception(exc))


def _shows_a_credential(text: str) -> bool:
    return any(piece in text for piece in _PIECES)


@pytest.mark.parametrize(
    ("url", "options", "named"),
    [
        pytest.param("redis://h.invalid/0", {"password": 424242}, "'password'", id="int"),
        pytest.param("redis://h.invalid/0", {"password": 424242.0}, "'password'", id="float"),
        pytest.param("redis://h.invalid/0", {"username": 424242}, "'username'", id="username"),
        pytest.param(
            "redis+sentinel://h.invalid/svc",
            {"sentinel_kwargs": {"password": 424242}},
            "'password'",
            id="sentinel-password",
        ),
        pytest.param(
            "redis+sentinel://h.invalid/svc",
            {"sentinel_kwargs": {"username": ["u-424242"]}},
            "'username'",
            id="sentinel-username",
        ),
        pytest.param(
            "redis+sentinel://h.invalid/svc",
            {"sentinel_kwargs": {"password": "pw-424242", 1: 2}},
            "'sentinel_kwargs'",
            id="sentinel-key-not-str",
        ),
        pytest.param(
            "redis+sentinel://h.invalid/svc",
            {"sentinel_kwargs": "password=424242"},
            "'sentinel_kwargs'",
            id="sentinel-not-dict",
        ),
        pytest.param(
            "redis+sentinel://h.invalid/svc",
            {"sentinel_kwargs": {"pasword": "pw-424242"}},
            "'pasword'",
            id="sentinel-unknown-argument",
        ),
    ],
)
def test_a_config_error_about_a_credential_names_it_and_never_quotes_it(
    url: str, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        RedisStore.from_url(url, **options)
    assert named in str(info.value)
    assert not _shows_a_credential(_told(info.value))


def test_an_ini_files_numeric_password_must_be_quoted(tmp_path: Path) -> None:
    """``store.password = 424242`` reads as a number, which could differ from the text."""
    ini = tmp_path / "app.ini"
    head = f"[session]\nsecret_key = {SECRET}\nstore = redis://h.invalid/0\n"
    ini.write_text(head + "store.password = 424242\n")
    with pytest.raises(ConfigError, match="'password' must be a string.*double quotes") as info:
        Config.from_ini(ini).open_store()
    assert not _shows_a_credential(_told(info.value))
    ini.write_text(head + 'store.password = "424242"\n')
    store = Config.from_ini(ini).open_store()
    assert isinstance(store, RedisStore)
    with store:
        assert _pool_kwargs(store)["password"] == "424242"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"redis://:{PASSWORD}@h.invalid:6379/0", id="slash"),
        pytest.param(f"redis://u:{PASSWORD}@h.invalid:6379/0?db=1", id="slash-and-query"),
        pytest.param(f"redis+cluster://:{PASSWORD}@h.invalid:7000", id="cluster-slash"),
        pytest.param(f"redis+sentinel://:{PASSWORD}@h.invalid/svc", id="sentinel-slash"),
        pytest.param(f"unix://:{PASSWORD}@/run/redis.sock", id="unix-slash"),
        pytest.param("redis://:s3cr@t:pa?ssw0rd@h.invalid/0", id="question-mark"),
        pytest.param("redis://:s3cr@t:pa#ssw0rd@h.invalid/0", id="hash"),
        pytest.param("redis://:s3cr\uff03t:pa-ssw0rd@h.invalid/0", id="nfkc-hash"),
    ],
)
def test_a_url_whose_password_ends_its_host_part_early_is_refused_unquoted(url: str) -> None:
    """Split there, the rest of the password would be read, and quoted, as a path, a
    port, a query or a fragment, and redis-py would send a piece of it."""
    with pytest.raises(ConfigError, match="store") as info:
        RedisStore.from_url(url)
    assert not _shows_a_credential(_told(info.value))


def test_a_unix_socket_path_may_hold_an_at_sign() -> None:
    with RedisStore.from_url("unix:///run/user@1/redis.sock") as store:
        assert _pool_kwargs(store)["path"] == "/run/user@1/redis.sock"


def test_a_store_on_a_ready_client_is_named_without_credentials() -> None:
    sentinel = Sentinel([("h.invalid", 26379)], password=PASSWORD)
    clients = [
        (
            redis.Redis(host="h.invalid", port=6380, db=2, password=PASSWORD),
            "redis://h.invalid:6380/2",
        ),
        (
            redis.Redis(unix_socket_path="/run/r.sock", password=PASSWORD),
            "unix:///run/r.sock?db=0",
        ),
        (sentinel.master_for("svc", db=3), "redis+sentinel:///svc/3"),
    ]
    for client, name in clients:
        with RedisStore(client) as store:
            assert repr(store) == f"<RedisStore {name}>"
    sentinel.close()


class _GuardedServer(RedisServer):
    """A server started with ``--requirepass PASSWORD``; its own client knows it."""

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=PASSWORD, socket_timeout=2, socket_connect_timeout=2
        )


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[_GuardedServer]:
    server = _GuardedServer(tmp_path / "redis", free_ports(1)[0], "--requirepass", PASSWORD)
    with running(server):
        yield server


@SERVER
@pytest.mark.parametrize("form", ["url", "url-with-user", "option"])
def test_a_password_with_at_colon_and_slash_connects_and_never_shows(
    guarded: _GuardedServer, caplog: pytest.LogCaptureFixture, form: str
) -> None:
    """In a repr, a LockTimeout, a StoreError, a ConfigError, a log line: never."""
    caplog.set_level(logging.DEBUG)
    host = f"127.0.0.1:{guarded.port}"
    # In a URL, only its '/' must be percent-encoded; the '@' and the ':' may stay.
    encoded = quote(PASSWORD, safe="@:")
    url, options = {
        "url": (f"redis://:{encoded}@{host}/0", {}),
        "url-with-user": (f"redis://default:{encoded}@{host}/0", {}),
        "option": (f"redis://{host}/0", {"password": PASSWORD}),
    }[form]
    told: list[str] = []
    with RedisStore.from_url(url, **options) as store:
        key = new_key()
        assert store.save(key, make_record(b"{}", user_id="u"), expected_version=None)
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"{}"
        told.append(repr(store))
        assert f"@{host}/0>" in told[-1] or f"//{host}/0>" in told[-1]
        lock, _ = redis_lock_keys(store, key)
        store.client.set(lock, "another-caller", px=60_000)
        with pytest.raises(LockTimeout) as timed_out:
            store.save_locked(key, lambda current: current, timeout=0.1)
        told.append(_told(timed_out.value))
    with pytest.raises(ConfigError) as bad:
        RedisStore.from_url(url, socket_timeout=0, **options)
    told.append(_told(bad.value))
    if form == "option":
        wrong_url, wrong_options = url, {"password": PASSWORD + "-wrong"}
    else:
        wrong_url, wrong_options = url.replace("ssw0rd", "ssw0rd-wrong"), {}
    with RedisStore.from_url(wrong_url, **wrong_options) as wrong:
        with pytest.raises(StoreError) as refused:
            wrong.load(new_key())
        told.append(_told(refused.value))
    guarded.stop()
    with RedisStore.from_url(url, retries=0, **options) as store:
        with pytest.raises(StoreError) as down:
            store.load(new_key())
        told.append(_told(down.value))
    told.append(caplog.text)
    for text in told:
        assert not _shows_a_credential(text), text


# -- the record layout (no server) ------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(make_record(), id="no-user"),
        pytest.param(make_record(user_id=""), id="empty-user"),
        pytest.param(make_record(b"\0\r\n" * 99, user_id="\u00e9" * 300, meta=b"m"), id="long"),
    ],
)
def test_layout_round_trips(record: Record) -> None:
    value = _redis_scripts.encode(record)
    assert _redis_scripts.decode(value) == record
    assert _redis_scripts.peek(value[: _redis_scripts.HEADER.size]) == (
        record.version,
        record.expires_at,
    )


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"wsr1" + b"\0" * 10, id="short-header"),
        pytest.param(b"wsr0" + _redis_scripts.encode(make_record())[4:], id="unknown-format"),
        pytest.param(_redis_scripts.encode(make_record(meta=b"meta"))[:-3], id="cut-short"),
        pytest.param(
            _redis_scripts.encode(make_record(b"", user_id="\u00e9"))[:-1], id="cut-in-user"
        ),
        pytest.param(b"\x81" + b"\0" * 60, id="garbage"),
        pytest.param(b"SeCr" + _redis_scripts.encode(make_record())[4:], id="secret-format"),
        pytest.param(
            _redis_scripts.HEADER.pack(b"wsr1", 1, 0.0, 2e9, 0.0, -7, 0) + b"SeCr",
            id="negative-user-length",
        ),
        pytest.param(
            _redis_scripts.encode(make_record(user_id="SeCr")).replace(b"SeCr", b"\xffeCr"),
            id="user-not-utf8",
        ),
    ],
)
def test_a_value_not_in_the_layout_does_not_decode_nor_quote_it(value: bytes) -> None:
    """The message says what is wrong; it ends up in logs and events, never the value."""
    with pytest.raises(ValueError) as info:
        _redis_scripts.decode(value)
    message = str(info.value)
    for quoted in ("SeCr", "eCr", "b'", "\\x", "0x", "-7"):
        assert quoted not in message


# -- the shared server -----------------------------------------------------------


@SERVER
def test_ready_client_and_key_layout() -> None:
    url = server_url("redis")
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(url)
    store = RedisStore(client, key_prefix=prefix)
    try:
        store.ping()
    except StoreError as exc:
        store.close()
        unreachable(url, exc)
    with store:
        key = new_key()
        record = make_record(b"data", meta=b"meta", ttl=600)
        assert store.save(key, record, expected_version=None)
        try:
            assert client.type(prefix + key) == b"string"
            value = client.get(prefix + key)
            assert value == _redis_scripts.encode(record)
            assert value.endswith(b"metadata")
            remaining = (record.expires_at - time.time()) * 1000
            assert abs(client.pttl(prefix + key) - remaining) < 2000
            assert store.count() == 1
        finally:
            client.delete(prefix + key)


@SERVER
def test_empty_user_id_is_not_none(shared: RedisStore) -> None:
    key = new_key()
    assert shared.save(key, make_record(user_id=""), expected_version=None)
    loaded = shared.load(key)
    assert loaded is not None and loaded.user_id == ""


@SERVER
def test_expiry_is_judged_by_the_application_clock(shared: RedisStore) -> None:
    """A record Redis still holds is gone once expires_at passes by the application's clock."""
    key = new_key()
    name = shared.key_prefix + key
    shared.client.set(name, _redis_scripts.encode(make_record(b"x", ttl=-5)), ex=3600)
    assert shared.load(key) is None
    assert shared.count() == 0
    assert not shared.refresh(key, time.time() + 60, time.time())
    assert not shared.save(key, make_record(b"y", version=2), expected_version=1)
    assert shared.save(key, make_record(b"new"), expected_version=None)
    loaded = shared.load(key)
    assert loaded is not None and loaded.data == b"new"


@SERVER
def test_delete_of_an_expired_record_says_it_was_not_live(shared: RedisStore) -> None:
    key = new_key()
    name = shared.key_prefix + key
    shared.client.set(name, _redis_scripts.encode(make_record(ttl=-5)), ex=3600)
    assert not shared.delete(key)
    assert shared.client.exists(name) == 0


@SERVER
def test_undecodable_string_is_corrupt_to_load_absent_elsewhere_and_replaced(
    shared: RedisStore,
) -> None:
    key = new_key()
    shared.client.set(shared.key_prefix + key, b"wsr1 but not a record", ex=3600)
    with pytest.raises(CorruptRecord, match="too short for a record header"):
        shared.load(key)
    assert shared.count() == 0
    assert not shared.refresh(key, time.time() + 60, time.time())
    assert not shared.save(key, make_record(version=2), expected_version=1)
    assert shared.save(key, make_record(b"new"), expected_version=None)
    loaded = shared.load(key)
    assert loaded is not None and loaded.data == b"new"


@SERVER
@pytest.mark.parametrize("user_id", [None, "ann"])
def test_a_key_of_another_type_is_corrupt_to_load_never_a_store_error(
    shared: RedisStore, user_id: str | None
) -> None:
    """A hash of the layout before this one, say: load says so, the rest see nothing."""
    key, other = new_key(), new_key()
    name = shared.key_prefix + key
    shared.client.hset(name, mapping={"data": b"x", "version": 1, "expires_at": 2e9})
    shared.client.expire(name, 3600)
    with pytest.raises(CorruptRecord, match="another type than a string"):
        shared.load(key)
    assert shared.count() == 0
    assert not shared.refresh(key, time.time() + 60, time.time())
    assert not shared.save(key, make_record(version=2), expected_version=1)
    assert shared.save(other, make_record(user_id=user_id), expected_version=None, replaces=key)
    assert shared.client.exists(name) == 0
    shared.client.hset(name, "version", 1)
    assert not shared.delete(key)
    shared.client.hset(name, "version", 1)
    assert shared.save(key, make_record(b"new", user_id=user_id), expected_version=None)
    loaded = shared.load(key)
    assert loaded is not None and loaded.data == b"new"
    if user_id is not None:
        shared.client.zadd(redis_user_key(shared, user_id), {other: time.time() + 60})
        shared.client.delete(shared.key_prefix + other)
        shared.client.hset(shared.key_prefix + other, "version", 1)
        assert [k for k, _ in shared.user_records(user_id)] == [key]


@SERVER
def test_a_user_index_name_of_another_type_fails_no_save(shared: RedisStore) -> None:
    """Something else's key where a user's set would be: the sessions are saved,
    moved and deleted all the same (an error inside the script, after the session's
    write, reported a save that had been stored as failed), and listing that user is
    the call that fails."""
    index = redis_user_key(shared, "ann")
    shared.client.set(index, "not a set")
    key, new = new_key(), new_key()
    assert shared.save(key, make_record(b"v1", user_id="ann"), expected_version=None)
    assert shared.save(
        new,
        make_record(b"v2", user_id="ann"),
        expected_version=None,
        replaces=key,
        replaces_version=1,
    )
    loaded = shared.load(new)
    assert loaded is not None and loaded.data == b"v2" and shared.load(key) is None
    assert shared.delete(new)
    assert shared.client.get(index) == b"not a set"
    with pytest.raises(StoreError, match="WRONGTYPE"):
        shared.user_records("ann")


@SERVER
def test_a_login_with_a_foreign_user_index_and_a_cap_keeps_its_cookie(
    shared: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    # The save went through, then the cap's listing raised: the response failed, and
    # the session it had stored went without a cookie.
    shared.client.set(redis_user_key(shared, "ann"), "not a set")
    client, _ = make_client(USER_ROUTES, store=shared, max_sessions_per_user=3)
    with caplog.at_level(logging.WARNING, logger="wsgisession"):
        response = client.get("/login?user=ann")
    assert response.status_code == 200 and "Set-Cookie" in response.headers
    assert body(client.get("/"))["user"] == "ann"
    assert "max_sessions_per_user not applied to this login" in caplog.text


@SERVER
def test_count_escapes_glob_characters_in_the_prefix(shared: RedisStore) -> None:
    other = RedisStore(shared.client, key_prefix=shared.key_prefix + "*b:")
    starry = RedisStore(shared.client, key_prefix=shared.key_prefix + "*:")
    assert other.save(new_key(), make_record(), expected_version=None)
    assert starry.save(new_key(), make_record(), expected_version=None)
    assert starry.count() == 1


# -- a private server -------------------------------------------------------------


@SERVER
def test_each_operation_is_one_round_trip(private_redis: RedisServer, sent: list[str]) -> None:
    with RedisStore.from_url(private_redis.url) as store:
        store.ping()
        warm, old, new = new_key(), new_key(), new_key()
        # A fresh server does not know a script yet: NOSCRIPT, then it is loaded.
        sent.clear()
        assert store.save(warm, make_record(user_id="ann"), expected_version=None)
        assert sent == ["EVALSHA", "SCRIPT LOAD", "EVALSHA"]
        assert store.refresh(warm, time.time() + 7200, time.time())
        assert store.delete(warm)
        steps = [
            # A new session without a user is one SET NX; with one, the script.
            (lambda: store.save(old, make_record(b"1"), expected_version=None), "SET"),
            (
                lambda: store.save(warm, make_record(user_id="ann"), expected_version=None),
                "EVALSHA",
            ),
            (lambda: store.load(old), "GET"),
            (lambda: store.save(old, make_record(b"2", version=2), expected_version=1), "EVALSHA"),
            (lambda: store.refresh(old, time.time() + 7200, time.time()), "EVALSHA"),
            (
                lambda: store.save(new, make_record(b"3"), expected_version=None, replaces=old),
                "EVALSHA",
            ),
            (lambda: store.delete(new), "EVALSHA"),
        ]
        for step, command in steps:
            sent.clear()
            assert step()
            assert sent == [command]
        assert store.load(old) is None


def _commands_run(client: redis.Redis, step: Callable[[], object]) -> dict[str, int]:
    """The commands the server ran for *step*, from ``INFO commandstats``."""
    client.config_resetstat()
    step()
    stats: dict[str, Any] = client.info("commandstats")
    ran = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    del ran["config|resetstat"]
    return ran


@SERVER
def test_a_session_without_a_user_never_touches_the_index(private_redis: RedisServer) -> None:
    """A new session is one SET NX; a save, the version check, a look at the save lock
    and one SET; a refresh, the check and the new times."""
    with RedisStore.from_url(private_redis.url) as store:
        client = store.client
        assert isinstance(client, redis.Redis)
        key = new_key()
        # The store's own connection, then one in the pool for the counting itself, so
        # that no connection's handshake lands in the counts.
        assert store.load(key) is None
        client.ping()
        assert _commands_run(
            client, lambda: store.save(key, make_record(), expected_version=None)
        ) == {"set": 1}
        assert store.save(key, make_record(version=2), expected_version=1)  # loads the script
        assert _commands_run(
            client, lambda: store.save(key, make_record(version=3), expected_version=2)
        ) == {"evalsha": 1, "getrange": 1, "exists": 1, "set": 1}
        assert _commands_run(client, lambda: store.load(key)) == {"get": 1}
        assert store.refresh(key, time.time() + 7200, time.time())  # loads the script
        assert _commands_run(
            client, lambda: store.refresh(key, time.time() + 9000, time.time())
        ) == {"evalsha": 1, "getrange": 1, "pexpire": 1, "setrange": 1}


@SERVER
def test_a_user_id_is_read_with_the_header(private_redis: RedisServer) -> None:
    """A save of a session with a user reads the header and the user id in one GETRANGE."""
    with RedisStore.from_url(private_redis.url) as store:
        client = store.client
        assert isinstance(client, redis.Redis)
        key = new_key()
        assert store.save(key, make_record(user_id="ann"), expected_version=None)
        ran = _commands_run(
            client,
            lambda: store.save(key, make_record(version=2, user_id="ann"), expected_version=1),
        )
        assert ran == {
            "evalsha": 1,
            "getrange": 1,
            "exists": 1,
            "set": 1,
            "zadd": 1,
            "zremrangebyscore": 1,
            "zrange": 1,
            "pexpire": 1,
        }


_BIG = b"\x00\xff" * (_redis_scripts.STAGE_AT // 2)


def _stages(store: RedisStore) -> list[bytes]:
    """The staged records left under *store*'s save locks."""
    return [n for n in store.client.scan_iter(match=store.key_prefix + "l:*") if b":w:" in n]


@SERVER
def test_a_big_record_is_staged_and_renamed_in_one_round_trip(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record of STAGE_AT bytes or more goes to the server as a plain SET, which Redis
    takes as it is, in one pipeline with the script, which renames it onto the session."""
    packets: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        packets.append(1)
        original(self, command, check_health)

    with RedisStore.from_url(private_redis.url) as store:
        client = store.client
        assert isinstance(client, redis.Redis)
        key = new_key()
        assert store.save(key, make_record(_BIG), expected_version=None)
        assert store.save(key, make_record(_BIG, version=2), expected_version=1)  # loads it
        record = make_record(_BIG + b"!", version=3, ttl=7200, user_id="ann")
        client.ping()  # the counting's own connection, so that its handshake isn't counted
        monkeypatch.setattr(
            redis.connection.AbstractConnection, "send_packed_command", send_packed_command
        )
        ran = _commands_run(client, lambda: store.save(key, record, expected_version=2))
        monkeypatch.undo()
        assert packets == [1, 1, 1]  # CONFIG RESETSTAT, the pipeline, INFO
        assert ran["set"] == 1 and ran["rename"] == 1 and ran["pexpire"] >= 1
        assert ran["evalsha"] == 1 and "zadd" in ran
        assert store.load(key) == record
        assert 7100_000 < client.pttl(store.key_prefix + key) <= 7200_000
        assert [k for k, _ in store.user_records("ann")] == [key]
        assert _stages(store) == []


@SERVER
def test_a_big_record_that_loses_its_compare_writes_nothing_and_leaves_no_stage(
    shared: RedisStore,
) -> None:
    key = new_key()
    assert shared.save(key, make_record(b"small"), expected_version=None)
    assert not shared.save(key, make_record(_BIG, version=2), expected_version=5)
    lock, _ = redis_lock_keys(shared, key)
    shared.client.set(lock, "someone", px=5000)
    assert not shared.save(key, make_record(_BIG, version=2), expected_version=1)
    shared.client.delete(lock)
    found = shared.load(key)
    assert found is not None and found.data == b"small"
    assert _stages(shared) == []


@SERVER
def test_one_big_record_wins_when_threads_race_on_a_version(shared: RedisStore) -> None:
    """Each racer stages its record under a name of its own: the losers' are deleted."""
    key = new_key()
    assert shared.save(key, make_record(b"small"), expected_version=None)
    barrier = threading.Barrier(8)

    def race(i: int) -> bool:
        barrier.wait()
        return shared.save(key, make_record(_BIG + bytes([i]), version=2), expected_version=1)

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(race, range(8)))
    assert won.count(True) == 1
    found = shared.load(key)
    assert found is not None and found.data == _BIG + bytes([won.index(True)])
    assert _stages(shared) == []


@SERVER
def test_a_big_record_replacing_a_key_moves_it_and_its_user(shared: RedisStore) -> None:
    old, new = new_key(), new_key()
    assert shared.save(old, make_record(b"old", user_id="ann"), expected_version=None)
    stone = make_record(b"", version=0, ttl=60)
    record = make_record(_BIG, user_id="bob")
    assert shared.save(
        new, record, expected_version=None, replaces=old, replaces_version=1, tombstone=stone
    )
    assert shared.load(new) == record
    assert shared.load(old) == stone
    assert shared.user_records("ann") == []
    assert [k for k, _ in shared.user_records("bob")] == [new]
    assert _stages(shared) == []


@SERVER
def test_a_big_record_on_a_server_without_the_script_is_staged_once(
    private_redis: RedisServer,
) -> None:
    """NOSCRIPT in the pipeline: the script is loaded and run on the record staged."""
    with RedisStore.from_url(private_redis.url) as store:
        key = new_key()
        assert store.save(key, make_record(b"small"), expected_version=None)
        record = make_record(_BIG, version=2)
        assert store.save(key, record, expected_version=1)
        assert store.load(key) == record
        assert _stages(store) == []


@SERVER
def test_a_big_record_whose_stage_vanished_changes_nothing(
    shared: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage is renamed before anything else is written: without it, the script
    fails whole, and the save is a StoreError."""
    key = new_key()
    assert shared.save(key, make_record(b"small", user_id="ann"), expected_version=None)
    pack = redis.connection.AbstractConnection.pack_commands

    def stage_elsewhere(self: Any, commands: Any) -> Any:
        # The pipeline's SET of the stage writes under another name.
        moved = [
            (name, f"{args[0]}-elsewhere", *args[1:]) if name == "SET" else (name, *args)
            for name, *args in commands
        ]
        return pack(self, moved)

    monkeypatch.setattr(redis.connection.AbstractConnection, "pack_commands", stage_elsewhere)
    with pytest.raises(StoreError, match="no such key"):
        shared.save(key, make_record(_BIG, version=2, user_id="bob"), expected_version=1)
    monkeypatch.undo()
    found = shared.load(key)
    assert found is not None and found.data == b"small" and found.version == 1
    assert [k for k, _ in shared.user_records("ann")] == [key]
    assert shared.user_records("bob") == []


@SERVER
def test_refresh_rewrites_only_the_times(shared: RedisStore) -> None:
    key = new_key()
    name = shared.key_prefix + key
    record = make_record(b"data" * 100, user_id="ann", meta=b"meta")
    assert shared.save(key, record, expected_version=None)
    before = shared.client.get(name)
    later, seen = record.expires_at + 60, record.last_seen + 1
    assert shared.refresh(key, later, seen)
    after = shared.client.get(name)
    assert len(after) == len(before)
    assert _redis_scripts.decode(after) == Record(
        record.data, 1, record.created_at, later, seen, "ann", b"meta"
    )
    assert shared.refresh(key, later - 30, seen - 1)  # never back
    assert shared.client.get(name) == after


@SERVER
def test_server_down_is_store_error_and_the_same_store_recovers(
    private_redis: RedisServer,
) -> None:
    with RedisStore.from_url(private_redis.url, key_prefix="s:") as store:
        key = new_key()
        assert store.save(key, make_record(b"kept", ttl=600), expected_version=None)
        private_redis.stop()
        for use in (
            lambda: store.load(key),
            lambda: store.save(new_key(), make_record(), expected_version=None),
        ):
            with pytest.raises(StoreError) as info:
                use()
            assert isinstance(info.value.__cause__, redis.ConnectionError)
        private_redis.start()
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"kept"
        assert store.save(key, make_record(b"after", version=2), expected_version=1)


# -- Cluster and Sentinel ---------------------------------------------------------


@SERVER
def test_cluster_spreads_sessions_over_the_masters(cluster: RedisStore) -> None:
    client = cluster.client
    assert isinstance(client, RedisCluster)
    keys = [new_key() for _ in range(30)]
    for n, key in enumerate(keys):
        assert cluster.save(key, make_record(str(n).encode()), expected_version=None)
    for n, key in enumerate(keys):
        loaded = cluster.load(key)
        assert loaded is not None and loaded.data == str(n).encode()
    nodes = {client.get_node_from_key(cluster.key_prefix + key).name for key in keys}
    assert len(nodes) == 3
    assert cluster.count() == len(keys)


@SERVER
def test_cluster_regenerate_across_slots(cluster: RedisStore) -> None:
    client = cluster.client
    assert isinstance(client, RedisCluster)
    old = new_key()
    new = next(
        k
        for k in iter(new_key, None)
        if client.keyslot(cluster.key_prefix + k) != client.keyslot(cluster.key_prefix + old)
    )
    assert cluster.save(old, make_record(b"data", user_id="u"), expected_version=None)
    assert cluster.save(
        new, make_record(b"data", user_id="u"), expected_version=None, replaces=old
    )
    assert cluster.load(old) is None
    loaded = cluster.load(new)
    assert loaded is not None and (loaded.data, loaded.user_id) == (b"data", "u")


@SERVER
def test_cluster_regenerate_with_a_version_moves_the_session_and_its_index_entry(
    cluster: RedisStore,
) -> None:
    old = new_key()
    new = other_slot(cluster, old)
    assert cluster.save(old, make_record(b"v1", user_id="u"), expected_version=None)
    assert cluster.save(old, make_record(b"v2", version=2, user_id="u"), expected_version=1)
    record = make_record(b"moved", user_id="u")
    assert not cluster.save(new, record, expected_version=None, replaces=old, replaces_version=1)
    assert cluster.load(new) is None
    assert [k for k, _ in cluster.user_records("u")] == [old]
    assert cluster.save(new, record, expected_version=None, replaces=old, replaces_version=2)
    assert cluster.load(old) is None
    loaded = cluster.load(new)
    assert loaded is not None and loaded.data == b"moved"
    assert cluster.client.zrange(redis_user_key(cluster, "u"), 0, -1) == [new.encode()]


@SERVER
def test_cluster_regenerate_failing_between_its_steps_loses_the_session(
    cluster: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old key goes first: a failure before the new one is written logs the user
    out, and never leaves two live ids for the session."""
    old = new_key()
    new = other_slot(cluster, old)
    assert cluster.save(old, make_record(b"v1", user_id="u"), expected_version=None)

    fail_script(cluster, monkeypatch, _redis_lua.SAVE, "node of the new key down")
    with pytest.raises(StoreError, match="node of the new key down"):
        cluster.save(
            new, make_record(user_id="u"), expected_version=None, replaces=old, replaces_version=1
        )
    assert cluster.load(old) is None
    assert cluster.load(new) is None
    assert cluster.user_records("u") == []
    assert cluster.client.exists(redis_user_key(cluster, "u")) == 0


@SERVER
def test_cluster_regenerate_onto_a_taken_key_deletes_nothing(cluster: RedisStore) -> None:
    old = new_key()
    new = other_slot(cluster, old)
    assert cluster.save(old, make_record(b"old"), expected_version=None)
    assert cluster.save(new, make_record(b"taken"), expected_version=None)
    assert not cluster.save(
        new, make_record(b"mine"), expected_version=None, replaces=old, replaces_version=1
    )
    loaded = cluster.load(old)
    assert loaded is not None and loaded.data == b"old"


@SERVER
def test_sentinel_save_and_load(redis_sentinel_url: str) -> None:
    with RedisStore.from_url(redis_sentinel_url, key_prefix=f"t{uuid.uuid4().hex[:8]}:") as store:
        key = new_key()
        assert store.save(key, make_record(b"via sentinel"), expected_version=None)
        loaded = store.load(key)
        assert loaded is not None and loaded.data == b"via sentinel"
        assert store.delete(key)


class _LoseOneSaveReply(TCPProxy):
    """Forwards everything but the answer to the next save script, whose connection it
    ends instead: the script ran, and redis-py, seeing the connection drop, sends it
    again (its retries)."""

    armed = False
    _sent = False

    def forwards(self, data: bytes, from_target: bool) -> bool:
        if not from_target and self.armed and _redis_lua.SAVE.sha.encode() in data:
            self._sent = True
        elif from_target and self._sent:
            self.armed = self._sent = False
            return False
        return True


@pytest.fixture
def lossy_redis() -> Iterator[tuple[_LoseOneSaveReply, Callable[[Any], SessionMiddleware]]]:
    """A proxy in front of the shared Redis that loses one save's answer when armed,
    and a factory of middleware whose store talks through it."""
    url = server_url("redis")
    host, port = url.split("//")[1].split("/")[0].split(":")
    proxy = _LoseOneSaveReply((host, int(port)))
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    built: list[SessionMiddleware] = []

    def wrap(app: Any) -> SessionMiddleware:
        middleware = SessionMiddleware(
            app,
            secret_key=SECRET,
            store=f"redis://127.0.0.1:{proxy.port}/0",
            store_options={"key_prefix": prefix},
            cleanup_interval=0,
        )
        built.append(middleware)
        try:
            middleware.store.ping()
        except StoreError as exc:
            unreachable(url, exc)
        return middleware

    try:
        yield proxy, wrap
    finally:
        for middleware in built:
            middleware.close()
        proxy.close()
        cleanup = redis.Redis.from_url(url)
        for key in list(cleanup.scan_iter(match=prefix + "*")):
            cleanup.delete(key)
        cleanup.close()


@SERVER
def test_a_save_whose_answer_was_lost_and_that_was_sent_again_counts_once(
    lossy_redis: tuple[_LoseOneSaveReply, Callable[[Any], SessionMiddleware]],
) -> None:
    # The second run loses its compare-and-set to the first; merged again under the
    # lock, the increment would count twice.
    proxy, wrap = lossy_redis

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/incr":
            session.incr("n")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(session.get("n")).encode()]

    client = Client(wrap(app))
    client.get("/incr")
    client.get("/incr")
    proxy.armed = True
    assert client.get("/incr").get_data() == b"3"
    assert not proxy.armed, "the proxy never lost a save's answer"
    assert client.get("/").get_data() == b"3"


@SERVER
def test_a_regenerate_whose_answer_was_lost_keeps_the_user_logged_in(
    lossy_redis: tuple[_LoseOneSaveReply, Callable[[Any], SessionMiddleware]],
) -> None:
    # Sent again, the script finds the new key taken and the old one a tombstone: read
    # as a concurrent regenerate, the login answered without a cookie and its user was
    # logged out.
    proxy, wrap = lossy_redis

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/login":
            session.regenerate()
            session.user_id = "ada"
        else:
            session["seen"] = True
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(session.user_id).encode()]

    client = Client(wrap(app))
    client.get("/")
    proxy.armed = True
    response = client.get("/login")
    assert not proxy.armed, "the proxy never lost a save's answer"
    assert response.get_data() == b"ada"
    assert "Set-Cookie" in response.headers
    assert client.get("/").get_data() == b"ada"
