"""The memcached store beyond the conformance suite: URLs and options, expiry times past
memcached's 30 days, refreshes, the item size limit, eviction, a server going down,
and several servers.

The rest, by behaviour: ``test_memcached_users.py`` (the user index) and
``test_memcached_races.py`` (regenerate between its two steps, the save lock).
Every test runs against real ``memcached`` processes, never a fake.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pymemcache.client.base import Client, PooledClient
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheUnexpectedCloseError

from tests.helpers import SECRET, SERVER, memcached_keys, wait_until
from tests.memcached_servers import MemcachedServer, started
from wsgisession import SessionMiddleware
from wsgisession.errors import ConfigError, StoreError
from wsgisession.stores import _memcached_format, open_store, wrap_client
from wsgisession.stores.base import CorruptRecord, Record
from wsgisession.stores.memcached import MemcachedStore
from wsgisession.testing import make_record, new_key

DAY = 86_400

# -- URLs and options (no server) ---------------------------------------------------


def test_one_host_gets_a_pooled_client_with_the_defaults() -> None:
    with MemcachedStore.from_url("memcached://example.invalid") as store:
        client = store.client
        assert isinstance(client, PooledClient)
        assert client.server == ("example.invalid", 11211)
        assert (client.connect_timeout, client.timeout) == (5.0, 5.0)
        assert store.key_prefix == "session:"
        assert repr(store) == "<MemcachedStore memcached://example.invalid>"


def test_several_hosts_get_a_hash_client() -> None:
    url = "memcached://10.0.0.1:11311,[::1]:11411,cache.invalid"
    with MemcachedStore.from_url(url, timeout=2, max_pool_size=8) as store:
        client = store.client
        assert isinstance(client, HashClient)
        assert sorted(client.clients) == ["10.0.0.1:11311", "::1:11411", "cache.invalid:11211"]
        assert all(isinstance(c, PooledClient) for c in client.clients.values())
        assert all(c.timeout == 2 for c in client.clients.values())


def test_the_registry_serves_the_scheme_and_wraps_a_ready_client() -> None:
    assert isinstance(open_store("memcached://127.0.0.1:1"), MemcachedStore)
    store = wrap_client(PooledClient(("127.0.0.1", 1)), key_prefix="app:")
    assert isinstance(store, MemcachedStore) and store.key_prefix == "app:"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("memcached://", id="no-host"),
        pytest.param("memcached://:11211", id="empty-host"),
        pytest.param("memcached://h:0", id="port-0"),
        pytest.param("memcached://h:99999", id="port-too-big"),
        pytest.param("memcached://h:port", id="port-not-a-number"),
        pytest.param("memcached://h:11211/db", id="path"),
        pytest.param("memcached://h:11211?timeout=1", id="query"),
        pytest.param("memcached://h,h", id="same-host-twice"),
        pytest.param("memcached://[::1", id="open-bracket"),
        pytest.param("memcache://h", id="scheme"),
    ],
)
def test_malformed_url_raises_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        MemcachedStore.from_url(url)


def test_credentials_in_the_url_are_refused_without_showing_them() -> None:
    with pytest.raises(ConfigError, match="no user or password") as caught:
        MemcachedStore.from_url("memcached://admin:hunter2@h:11211")
    assert "hunter2" not in str(caught.value)


def test_a_store_name_holding_a_password_is_masked() -> None:
    store = MemcachedStore(PooledClient(("h", 1)), name="memcached://u:hunter2@h:1")
    assert "hunter2" not in repr(store)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"socket_timeout": 1}, "socket_timeout", id="unknown"),
        pytest.param({"timeout": 0}, "timeout", id="timeout-zero"),
        pytest.param({"connect_timeout": "5"}, "connect_timeout", id="timeout-string"),
        pytest.param({"max_pool_size": 0}, "max_pool_size", id="pool-zero"),
        pytest.param({"max_pool_size": True}, "max_pool_size", id="pool-bool"),
        pytest.param({"no_delay": "yes"}, "no_delay", id="no-delay-string"),
        pytest.param({"key_prefix": "my sessions:"}, "key_prefix", id="prefix-space"),
        pytest.param({"key_prefix": "s\u00e9ance:"}, "key_prefix", id="prefix-not-ascii"),
        pytest.param({"key_prefix": "p" * 185}, "key_prefix", id="prefix-too-long"),
    ],
)
def test_bad_option_raises_config_error_naming_it(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        MemcachedStore.from_url("memcached://h:11211", **options)


def test_a_client_of_another_library_is_refused() -> None:
    with pytest.raises(ConfigError, match="pymemcache"):
        MemcachedStore(object())


def test_building_contacts_nothing_and_the_first_use_raises_store_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free, and nobody listens on it
    store = MemcachedStore.from_url(f"memcached://127.0.0.1:{port}", connect_timeout=1)
    with store, pytest.raises(StoreError, match=f"memcached://127.0.0.1:{port}"):
        store.load(new_key())


# -- on a server ---------------------------------------------------------------------


@pytest.fixture
def mc(private_memcached: MemcachedServer) -> Iterator[MemcachedStore]:
    """A store on a memcached of this test alone (default 1 MB item limit)."""
    with MemcachedStore.from_url(private_memcached.url) as store:
        yield store


def _ask(server_url: str, command: str) -> str:
    """Send one command to the server over a socket of its own; return its first line."""
    host, _, port = server_url.removeprefix("memcached://").partition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(command.encode() + b"\r\n")
        answer = b""
        while not answer.endswith(b"\r\n"):
            answer += sock.recv(4096)
    return answer.decode().split("\r\n")[0]


def _ttl(server_url: str, name: str) -> int | None:
    """The seconds memcached will keep *name*, from its meta get; ``None`` if absent."""
    answer = _ask(server_url, f"mg {name} t")
    if answer.startswith("EN"):
        return None
    return int(answer.split(" t")[1].split()[0])


def _stat(store: MemcachedStore, name: str) -> int:
    return int(store.client.stats()[name.encode()])


@SERVER
def test_a_locked_save_that_cant_let_go_of_its_lock_still_reports_its_write(
    mc: MemcachedStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The release's error replaced the return: a save that landed was reported failed
    # (an app retrying it applied an incr() twice; a regenerate lost its cookie).
    key = new_key()
    assert mc.save(key, make_record(b"v1"), expected_version=None)
    real = mc.client.cas

    def cas(name: str, value: bytes, token: bytes, *args: Any, **kwargs: Any) -> Any:
        if value == b"":  # letting go of the lock: the connection drops
            raise MemcacheUnexpectedCloseError()
        return real(name, value, token, *args, **kwargs)

    monkeypatch.setattr(mc.client, "cas", cas)

    def build(current: Record) -> Record:
        return make_record(b"v2", version=current.version + 1)

    written = mc.save_locked(key, build, timeout=5)
    assert written is not None and written.data == b"v2"
    loaded = mc.load(key)
    assert loaded is not None and loaded.data == b"v2"
    assert "could not let go of a session's save lock" in caplog.text


@SERVER
def test_the_value_holds_the_record_in_the_documented_layout(mc: MemcachedStore) -> None:
    key = new_key()
    record = make_record(b"data", user_id="ann", meta=b"meta")
    assert mc.save(key, record, expected_version=None)
    value = mc.client.get(mc.key_prefix + key)
    stored = _memcached_format.decode_record(value)
    assert stored.record == record
    assert stored.indexed_until >= record.expires_at, "the user index lists it for less"


@SERVER
def test_a_value_in_no_known_layout_is_corrupt_to_load_and_replaced_by_a_create(
    mc: MemcachedStore,
) -> None:
    key = new_key()
    mc.client.set(mc.key_prefix + key, b"not a record at all", expire=60, noreply=False)
    with pytest.raises(CorruptRecord, match="no session record"):
        mc.load(key)
    assert not mc.refresh(key, time.time() + 60, time.time())
    assert mc.save(key, make_record(b"fresh"), expected_version=None)
    loaded = mc.load(key)
    assert loaded is not None and loaded.data == b"fresh"


@SERVER
@pytest.mark.parametrize("days", [29, 30, 31, 90, 3650])
def test_an_expiry_past_thirty_days_lives_as_long_as_it_should(
    mc: MemcachedStore, private_memcached: MemcachedServer, days: int
) -> None:
    """Memcached reads more than 30 days as an absolute time: given as seconds, 90 days
    would be a date in 1970, and the record would vanish at once."""
    key = new_key()
    record = make_record(b"remembered", ttl=days * DAY, user_id="ann")
    assert mc.save(key, record, expected_version=None)
    loaded = mc.load(key)
    assert loaded is not None and loaded.expires_at == pytest.approx(record.expires_at, abs=0.01)
    ttl = _ttl(private_memcached.url, mc.key_prefix + key)
    assert ttl is not None, "memcached dropped the record at once"
    # Never shorter than its life (memcached counts whole seconds), and barely longer.
    assert days * DAY <= ttl <= days * DAY + 5
    [(found, _)] = mc.user_records("ann")
    assert found == key
    index = _ttl(private_memcached.url, mc._index.name("ann"))
    assert index is not None and index >= ttl, "the user index would expire first"


@SERVER
def test_a_short_expiry_really_expires_in_memcached(
    mc: MemcachedStore, private_memcached: MemcachedServer
) -> None:
    key = new_key()
    assert mc.save(key, make_record(b"brief", ttl=1.2), expected_version=None)
    assert mc.client.get(mc.key_prefix + key) is not None
    wait_until("memcached dropped the record", lambda: mc.client.get(mc.key_prefix + key) is None)
    assert mc.load(key) is None


@SERVER
def test_an_already_expired_record_is_never_kept(mc: MemcachedStore) -> None:
    key = new_key()
    assert mc.save(key, make_record(b"dead", ttl=-1), expected_version=None)
    assert mc.client.get(mc.key_prefix + key) is None


@SERVER
def test_refresh_after_a_load_is_one_compare_and_set(
    mc: MemcachedStore, private_memcached: MemcachedServer
) -> None:
    key = new_key()
    record = make_record(b"x" * 2000, ttl=60)
    assert mc.save(key, record, expected_version=None)
    assert mc.load(key) is not None
    gets, cas = _stat(mc, "cmd_get"), _stat(mc, "cas_hits")
    assert mc.refresh(key, record.expires_at + 3600, record.last_seen + 1)
    assert (_stat(mc, "cmd_get"), _stat(mc, "cas_hits")) == (gets, cas + 1)
    ttl = _ttl(private_memcached.url, mc.key_prefix + key)
    assert ttl is not None and ttl > 3600, "memcached's expiry did not move"


@SERVER
def test_a_refresh_that_moves_nothing_writes_nothing(mc: MemcachedStore) -> None:
    key = new_key()
    record = make_record(ttl=600)
    assert mc.save(key, record, expected_version=None)
    before = _stat(mc, "cas_hits") + _stat(mc, "cmd_set")
    assert mc.refresh(key, record.expires_at - 60, record.last_seen - 1)
    assert _stat(mc, "cas_hits") + _stat(mc, "cmd_set") == before


@SERVER
def test_a_save_after_a_load_is_one_round_trip(mc: MemcachedStore) -> None:
    key = new_key()
    assert mc.save(key, make_record(b"v1"), expected_version=None)
    assert mc.load(key) is not None
    gets = _stat(mc, "cmd_get")
    assert mc.save(key, make_record(b"v2", version=2), expected_version=1)
    assert _stat(mc, "cmd_get") == gets, "the save read the record again"


@SERVER
def test_a_record_over_the_item_limit_is_a_store_error_naming_it(mc: MemcachedStore) -> None:
    """Never a silent drop: the server's 1 MB limit is named, and the old record stays."""
    key = new_key()
    assert mc.save(key, make_record(b"small"), expected_version=None)
    huge = make_record(bytes(1 << 20), version=2)
    with pytest.raises(StoreError, match=r"item limit \(item_size_max, 1,048,576 bytes\)"):
        mc.save(key, huge, expected_version=1)
    loaded = mc.load(key)
    assert loaded is not None and (loaded.data, loaded.version) == (b"small", 1)
    with pytest.raises(StoreError, match="item_size_max"):
        mc.save(new_key(), huge, expected_version=None)


@SERVER
def test_the_middleware_answers_an_oversized_session_with_the_error(
    mc: MemcachedStore,
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["session"]["blob"] = "x" * (1 << 20)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = SessionMiddleware(
        app, secret_key=SECRET, store=mc, cleanup_interval=0, max_size=4 << 20
    )
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "x", "SERVER_PORT": "80"}
    environ |= {"wsgi.url_scheme": "http"}
    with pytest.raises(StoreError, match="item_size_max"):
        list(middleware(environ, lambda status, headers, exc_info=None: None))
    assert middleware.metrics()["store_errors"] == 1


@SERVER
def test_an_evicted_session_reads_as_gone_never_as_an_error() -> None:
    server = started("-m", "4")
    try:
        with MemcachedStore.from_url(server.url) as store:
            key = new_key()
            assert store.save(key, make_record(b"s" * 100_000), expected_version=None)
            filler = PooledClient(("127.0.0.1", server.port), default_noreply=False)
            try:
                # Forty times the server's memory, the session never read meanwhile (a
                # read would keep it in use).
                for n in range(1600):
                    filler.set(f"filler:{n}", b"f" * 100_000)
                assert int(filler.stats()[b"evictions"]) > 0
            finally:
                filler.close()
            assert store.load(key) is None
            assert not store.refresh(key, time.time() + 60, time.time())
            assert not store.save(key, make_record(version=2), expected_version=1)
            assert not store.delete(key)
    finally:
        server.kill()


@SERVER
def test_a_killed_server_is_a_store_error_and_the_same_store_recovers(
    mc: MemcachedStore, private_memcached: MemcachedServer
) -> None:
    """Memcached keeps nothing across a restart: what was saved reads as gone after."""
    key = new_key()
    assert mc.save(key, make_record(b"before"), expected_version=None)
    private_memcached.kill()
    for operation in (
        lambda: mc.load(key),
        lambda: mc.save(new_key(), make_record(), expected_version=None),
        lambda: mc.refresh(key, time.time() + 60, time.time()),
        lambda: mc.delete(key),
        mc.ping,
    ):
        with pytest.raises(StoreError, match=private_memcached.url):
            operation()
    private_memcached.start()
    assert mc.load(key) is None
    again = new_key()
    assert mc.save(again, make_record(b"after"), expected_version=None)
    loaded = mc.load(again)
    assert loaded is not None and loaded.data == b"after"


# -- several servers -----------------------------------------------------------------


@pytest.fixture
def pair(memcached_pair: list[MemcachedServer]) -> Iterator[MemcachedStore]:
    """A store over two servers of this test alone."""
    hosts = ",".join(s.url.removeprefix("memcached://") for s in memcached_pair)
    with MemcachedStore.from_url(f"memcached://{hosts}", timeout=2, connect_timeout=1) as store:
        yield store


@SERVER
def test_sessions_spread_over_the_servers_each_beside_its_lock(pair: MemcachedStore) -> None:
    keys = [new_key() for _ in range(40)]
    for key in keys:
        assert pair.save(key, make_record(user_id="ann"), expected_version=None)
    held = {client.server: set(names) for client, names in memcached_keys(pair).items()}
    sessions = {
        s: {n for n in names if n.removeprefix(pair.key_prefix) in keys}
        for s, names in held.items()
    }
    assert all(len(found) >= 5 for found in sessions.values()), "one server got nearly all"
    servers = pair._servers
    for key in keys:
        assert servers.for_key(key) is servers.for_key(key)
        home = servers.for_key(key).server
        assert pair.key_prefix + key in held[home]
    assert sorted(k for k, _ in pair.user_records("ann")) == sorted(keys)


@SERVER
def test_a_down_server_fails_its_own_keys_and_moves_none(
    pair: MemcachedStore, memcached_pair: list[MemcachedServer]
) -> None:
    """HashClient's own commands would answer "missing", then send the keys to the
    other server, where a logged-out session could come back: never here."""
    keys = [new_key() for _ in range(20)]
    for key in keys:
        assert pair.save(key, make_record(b"v1"), expected_version=None)
    down, up = memcached_pair
    home = {key: pair._servers.for_key(key).server for key in keys}
    down_address = ("127.0.0.1", down.port)
    down.kill()
    for _ in range(3):  # again and again: HashClient would mark it dead and move its keys
        for key in keys:
            if home[key] == down_address:
                with pytest.raises(StoreError):
                    pair.load(key)
                with pytest.raises(StoreError):
                    pair.save(key, make_record(b"v2", version=2), expected_version=1)
            else:
                loaded = pair.load(key)
                assert loaded is not None and loaded.data == b"v1"
    assert all(pair._servers.for_key(key).server == home[key] for key in keys)


@SERVER
def test_a_store_on_a_ready_hash_client(memcached_pair: list[MemcachedServer]) -> None:
    client = HashClient([("127.0.0.1", s.port) for s in memcached_pair], use_pooling=True)
    with MemcachedStore(client, key_prefix="ready:") as store:
        key = new_key()
        assert store.save(key, make_record(b"x"), expected_version=None)
        assert store.load(key) is not None
        assert repr(store).startswith("<MemcachedStore memcached://127.0.0.1:")


@SERVER
def test_a_plain_client_works_for_one_thread(private_memcached: MemcachedServer) -> None:
    client = Client(("127.0.0.1", private_memcached.port))
    with MemcachedStore(client) as store:
        key = new_key()
        assert store.save(key, make_record(b"x", user_id="u"), expected_version=None)
        loaded: Record | None = store.load(key)
        assert loaded is not None and [k for k, _ in store.user_records("u")] == [key]
