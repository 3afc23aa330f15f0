"""Security checks on every store: replay after a logout, what the store and the logs
hold, how signatures are compared, and pickle records nobody signed.

Session fixation (a planted id dying at login) is in ``test_regenerate.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import itsdangerous.signer
import pytest
import sqlalchemy as sa
from itsdangerous import Signer
from werkzeug.test import Client

from tests.helpers import (
    SECRET,
    FakeClock,
    PickleTrap,
    body,
    cookie_value,
    counter,
    get_with_cookie_header,
    holds_no_session,
    id_of,
    login,
    logout,
    make_client,
    meanwhile,
    peek,
    put,
    raw_dump,
    with_cookie,
)
from wsgisession import Session
from wsgisession.ids import store_key
from wsgisession.serializers import PickleSerializer
from wsgisession.stores import Store
from wsgisession.stores.file import FileStore
from wsgisession.stores.memcached import MemcachedStore
from wsgisession.stores.memory import MemoryStore
from wsgisession.stores.redis import RedisStore
from wsgisession.stores.sql import SQLStore

OLD_SECRET = "the-key-before-the-last-rotation"
COOKIE_SALT = b"wsgisession.session-id"

FRESH = {"data": {}, "new": True, "expired": False}
GONE = {"data": {}, "new": True, "expired": True}


ROUTES = {"/inc": counter, "/peek": peek, "/login": login, "/logout": logout, "/put": put}


def visit(client: Client, path: str, **kwargs: Any) -> Any:
    response = client.get(path, **kwargs)
    assert response.status_code == 200
    return body(response)


# -- replay -------------------------------------------------------------------


def test_no_cookie_from_before_a_logout_loads_anything(store: Store, clock: FakeClock) -> None:
    """Replay: every cookie the session ever had is dead once it logs out, even if a
    request that loaded it before the logout saves after it.
    """
    inner: dict[str, Client] = {}
    slow = meanwhile(lambda: visit(inner["tab"], "/logout"), late="1")
    client, middleware = make_client({**ROUTES, "/slow": slow}, store=store)
    visit(client, "/inc")
    issued = [cookie_value(client)]
    visit(client, "/login?remember=1&flash=welcome")
    issued.append(cookie_value(client))
    inner["tab"] = with_cookie(middleware, issued[-1])

    visit(client, "/slow")
    clock.advance(61)  # past regenerate_grace, when the first id gets no special care
    for value in issued:
        assert holds_no_session(store, store_key(id_of(value)))
        assert visit(with_cookie(middleware, value), "/peek") == GONE
        replayed = with_cookie(middleware, value)
        visit(replayed, "/put?key=again&value=1")
        assert id_of(cookie_value(replayed)) not in map(id_of, issued)
    for value in issued:
        assert holds_no_session(store, store_key(id_of(value)))


# -- what the store holds ---------------------------------------------------------------------


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def raw_contents(store: Store) -> bytes:
    """Everything the backend holds for *store*: names, keys and values, undecoded."""
    if isinstance(store, MemoryStore):
        return repr(vars(store)).encode()
    if isinstance(store, FileStore):
        parts = []
        for path in sorted(Path(store.directory).rglob("*")):
            parts.append(str(path).encode())
            if path.is_file():
                parts.append(path.read_bytes())
        return b"\n".join(parts)
    if isinstance(store, SQLStore):
        if store.engine.dialect.name == "sqlite":
            # The database file itself, pages and write-ahead log included.
            database = Path(str(store.engine.url.database))
            files = [database, database.with_name(database.name + "-wal")]
            return b"\n".join(f.read_bytes() for f in files if f.exists())
        tables = [
            name
            for name in sa.inspect(store.engine).get_table_names()
            if name.startswith(store.table.name)
        ]
        parts = []
        with store.engine.connect() as conn:
            for name in tables:
                table = sa.Table(name, sa.MetaData(), autoload_with=conn)
                parts.append(name.encode())
                for row in conn.execute(sa.select(table)):
                    parts.extend(_as_bytes(value) for value in row)
        return b"\n".join(parts)
    if isinstance(store, MemcachedStore):
        return raw_dump(store, Path())
    assert isinstance(store, RedisStore)
    client: Any = store.client
    parts = []
    for name in client.scan_iter(match=store.key_prefix + "*"):
        parts.append(name)
        kind = client.type(name)
        if kind == b"hash":
            for field, value in client.hgetall(name).items():
                parts += [field, value]
        elif kind == b"string":
            parts.append(client.get(name))
        elif kind == b"set":
            parts.extend(client.smembers(name))
        elif kind == b"zset":
            parts.extend(member for member, _ in client.zrange(name, 0, -1, withscores=True))
        elif kind == b"list":
            parts.extend(client.lrange(name, 0, -1))
        else:
            raise AssertionError(f"unexpected Redis type {kind!r} under the prefix")
    return b"\n".join(parts)


def test_the_store_never_holds_a_raw_id(store: Store) -> None:
    """A leaked dump of the store must not be replayable as cookies."""
    issued: set[str] = set()
    client, middleware = make_client(ROUTES, store=store, bind_ip=True)
    old, _ = make_client(ROUTES, store=store, secret_key=OLD_SECRET)
    rotated, _ = make_client(ROUTES, store=store, secret_key_fallbacks=[OLD_SECRET])

    def track(visitor: Client, *paths: str) -> None:
        for path in paths:
            visit(visitor, path)
            cookie = visitor.get_cookie("session_id")
            if cookie is not None and cookie.value:
                issued.add(cookie.value)

    track(client, "/inc", "/inc", "/login?remember=1&flash=welcome", "/inc", "/put?key=k&value=v")
    leaver = Client(middleware)
    track(leaver, "/inc", "/login?remember=1&flash=welcome", "/logout", "/inc")
    track(old, "/inc", "/inc")
    rotated.set_cookie("session_id", cookie_value(old))
    track(rotated, "/inc")

    raw = raw_contents(store)
    live = [value for value in issued if store.load(store_key(id_of(value))) is not None]
    assert len(live) >= 3
    for value in live:  # the scan does see every record
        assert store_key(id_of(value)).encode() in raw
    assert b"ann" in raw
    for value in issued:
        assert id_of(value).encode() not in raw
        assert value.encode() not in raw


# -- what the logs hold -------------------------------------------------------------------------


def test_logs_never_hold_a_secret_a_full_id_or_a_store_key(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Logs travel further than the store: to aggregators, tickets and screenshots."""
    issued: set[str] = set()
    own = Signer(SECRET, salt=COOKIE_SALT, key_derivation="hmac", digest_method=hashlib.sha256)

    def track(visitor: Client, path: str, **kwargs: Any) -> None:
        visitor.get(path, **kwargs)
        cookie = visitor.get_cookie("session_id")
        if cookie is not None and cookie.value:
            issued.add(cookie.value)

    inner: dict[str, Client] = {}
    slow = meanwhile(lambda: inner["tab"].get("/logout"), late="1")

    with caplog.at_level(logging.DEBUG, logger="wsgisession"):
        client, middleware = make_client(
            {**ROUTES, "/slow": slow},
            store=store,
            bind_ip=True,
            secret_key_fallbacks=[OLD_SECRET],
        )
        old, _ = make_client(ROUTES, store=store, secret_key=OLD_SECRET)
        for path in ("/inc", "/login?remember=1&flash=welcome", "/inc"):
            track(client, path)
        value = cookie_value(client)
        thief = with_cookie(middleware, value)
        track(thief, "/peek", environ_overrides={"REMOTE_ADDR": "10.9.9.9"})
        for hostile in (
            value[:-2] + ("AA" if value[-2:] != "AA" else "BB"),
            value + "x" * 10_000,
            own.sign("../../x").decode(),
            id_of(value),
            "",
        ):
            get_with_cookie_header(middleware, "/inc", f"session_id={hostile}", buffered=True)

        corrupted = Client(middleware)
        track(corrupted, "/inc")
        key = store_key(id_of(cookie_value(corrupted)))
        record = store.load(key)
        assert record is not None
        damaged = replace(record, meta=b'{"v":0}', version=record.version + 1)
        assert store.save(key, damaged, expected_version=record.version)
        track(corrupted, "/inc")

        track(old, "/inc")
        rotated = with_cookie(middleware, cookie_value(old))
        track(rotated, "/inc")

        inner["tab"] = with_cookie(middleware, cookie_value(client))
        track(client, "/slow")
        track(with_cookie(middleware, value), "/inc")

    text = caplog.text
    for expected in ("did not verify", "corrupt", "another address", "ended by another"):
        assert expected in text
    for secret in (SECRET, OLD_SECRET):
        assert secret not in text
    for value in issued:
        session_id = id_of(value)
        for leak in (session_id, store_key(session_id), value.rsplit(".", 1)[1]):
            assert leak not in text


def test_a_sessions_repr_shows_no_key_name() -> None:
    # Key names are data, sealed in the store; error trackers record reprs of locals.
    seen: list[str] = []

    def handler(session: Session, request: Any) -> str:
        session["oauth_refresh_token_of_ann"] = "tok"
        seen.append(repr(session))
        return "ok"

    client, _ = make_client({"/": handler})
    client.get("/")
    client.get("/")
    assert seen == ["<Session new, 1 key>", "<Session stored, 1 key>"]


# -- signatures -------------------------------------------------------------------------------


def test_signature_verification_goes_through_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """itsdangerous compares signatures with hmac.compare_digest, in constant time."""
    assert itsdangerous.signer.hmac is hmac
    real = hmac.compare_digest
    calls: list[bool] = []

    def recording(a: Any, b: Any) -> bool:
        calls.append(real(a, b))
        return calls[-1]

    client, middleware = make_client(ROUTES, secret_key_fallbacks=[OLD_SECRET])
    visit(client, "/inc")
    value = cookie_value(client)
    monkeypatch.setattr(itsdangerous.signer.hmac, "compare_digest", recording)

    assert visit(client, "/peek")["data"] == {"n": 1}
    assert calls == [True]
    calls.clear()
    forged = f"{id_of(value)}.{'A' * 43}"
    response = get_with_cookie_header(middleware, "/peek", f"session_id={forged}", buffered=True)
    assert body(response) == FRESH
    assert calls == [False, False]  # the current key, then the fallback


@pytest.mark.parametrize(
    ("verdict", "forge", "expected"),
    [
        pytest.param(False, False, FRESH, id="valid-signature-refused"),
        pytest.param(True, True, {"data": {"n": 1}, "new": False, "expired": False}, id="forged"),
    ],
)
def test_compare_digest_alone_decides_whether_a_signature_verifies(
    monkeypatch: pytest.MonkeyPatch, verdict: bool, forge: bool, expected: dict[str, Any]
) -> None:
    """No ``==`` runs beside it: forcing its verdict either way decides the outcome."""
    client, middleware = make_client(ROUTES)
    visit(client, "/inc")
    value = cookie_value(client)
    if forge:
        value = f"{id_of(value)}.{'A' * 43}"
    monkeypatch.setattr(itsdangerous.signer.hmac, "compare_digest", lambda a, b: verdict)
    response = get_with_cookie_header(middleware, "/peek", f"session_id={value}", buffered=True)
    assert body(response) == expected


# -- pickle records -----------------------------------------------------------------------------


FORGERIES: list[Any] = [
    pytest.param(pickle.dumps, id="bare-pickle"),
    pytest.param(lambda obj: bytes(32) + pickle.dumps(obj), id="zero-tag"),
    pytest.param(
        lambda obj: hmac.digest(SECRET.encode(), pickle.dumps(obj), "sha256") + pickle.dumps(obj),
        id="signed-with-the-raw-secret",
    ),
    pytest.param(PickleSerializer("a-key-of-the-attacker").dumps, id="signed-with-another-key"),
]


@pytest.mark.parametrize("forge", FORGERIES)
def test_pickle_record_written_without_the_secret_is_never_unpickled(
    store: Store, forge: Callable[[object], bytes], tmp_path: Path
) -> None:
    """Write access to the store must not let anyone run code in the application."""
    marker = tmp_path / "sprung"
    client, middleware = make_client(ROUTES, store=store, serializer="pickle")
    visit(client, "/inc")
    value = cookie_value(client)
    key = store_key(id_of(value))
    record = store.load(key)
    assert record is not None
    payload = {"n": PickleTrap(marker)}
    crafted = replace(record, data=forge(payload), meta=b'{"v":1}', version=record.version + 1)
    assert store.save(key, crafted, expected_version=record.version)

    assert visit(client, "/peek") == GONE
    assert not marker.exists()
    assert visit(with_cookie(middleware, value), "/inc") == 1
    assert store.load(key) is None
    assert not marker.exists()
    pickle.loads(pickle.dumps(payload))  # the trap is real: plain pickle springs it
    assert marker.exists()


def test_pickle_record_signed_with_a_fallback_key_loads_and_is_re_signed(store: Store) -> None:
    old, _ = make_client(ROUTES, store=store, serializer="pickle", secret_key=OLD_SECRET)
    visit(old, "/inc")
    value = cookie_value(old)
    _, rotated = make_client(
        ROUTES, store=store, serializer="pickle", secret_key_fallbacks=[OLD_SECRET]
    )
    client = with_cookie(rotated, value)
    assert visit(client, "/peek") == {"data": {"n": 1}, "new": False, "expired": False}
    assert visit(client, "/inc") == 2

    _, current_only = make_client(ROUTES, store=store, serializer="pickle")
    latest = with_cookie(current_only, cookie_value(client))
    assert visit(latest, "/peek") == {"data": {"n": 2}, "new": False, "expired": False}
