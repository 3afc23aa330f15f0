"""Hostile input: forged cookies, corrupt records, unencodable and oversized sessions.

Whatever a client sends or a store holds, a request gets a normal response with a
fresh session, and nothing a forged cookie names ever reaches the store.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from itsdangerous import Signer
from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Request

from tests.helpers import (
    SECRET,
    body,
    cookie_value,
    counter,
    get_with_cookie_header,
    live_sessions,
    logout,
    make_client,
    peek,
    session_id_of,
    set_cookies,
)
from wsgisession import Session, SessionError, SessionMiddleware
from wsgisession._sealing import Sealer
from wsgisession.cookies import MAX_CHECKED
from wsgisession.ids import store_key
from wsgisession.serializers import JSONSerializer
from wsgisession.stores import Store
from wsgisession.stores.base import Record
from wsgisession.stores.memory import MemoryStore

# The same signer as src/wsgisession/cookies.py, so a test can put a valid
# signature over a value the middleware never minted.
COOKIE_SALT = b"wsgisession.session-id"
FALLBACK = "an-older-key-still-accepted-during-the-rotation"

FRESH = {"data": {}, "new": True, "expired": False}
GONE = {"data": {}, "new": True, "expired": True}


class RecordingStore(Store):
    """A real store with every call it gets recorded: instrumentation, not a fake."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RecordingStore:
        raise TypeError("RecordingStore wraps an open store")

    def load(self, key: str) -> Record | None:
        self.calls.append(("load", key, {}))
        return self.inner.load(key)

    def save(
        self,
        key: str,
        record: Record,
        *,
        expected_version: int | None,
        replaces: str | None = None,
        replaces_version: int | None = None,
        tombstone: Record | None = None,
    ) -> bool:
        kwargs = {
            "expected_version": expected_version,
            "replaces": replaces,
            "replaces_version": replaces_version,
        }
        self.calls.append(("save", key, kwargs))
        return self.inner.save(key, record, tombstone=tombstone, **kwargs)

    def save_locked(
        self,
        key: str,
        build: Callable[[Record], Record | None],
        *,
        timeout: float,
        moves_to: str | None = None,
        tombstone: Record | None = None,
    ) -> Record | None:
        self.calls.append(("save_locked", key, {"moves_to": moves_to}))
        return self.inner.save_locked(
            key, build, timeout=timeout, moves_to=moves_to, tombstone=tombstone
        )

    def refresh(
        self, key: str, expires_at: float, last_seen: float, *, version: int | None = None
    ) -> bool:
        self.calls.append(("refresh", key, {}))
        return self.inner.refresh(key, expires_at, last_seen, version=version)

    def delete(self, key: str) -> bool:
        self.calls.append(("delete", key, {}))
        return self.inner.delete(key)

    def ping(self) -> None:
        self.calls.append(("ping", "", {}))
        self.inner.ping()

    def cleanup(self, *, limit: int | None = None) -> int:
        self.calls.append(("cleanup", "", {}))
        return self.inner.cleanup(limit=limit)

    def user_records(self, user_id: str) -> list[tuple[str, Record]]:
        self.calls.append(("user_records", user_id, {}))
        return self.inner.user_records(user_id)

    def count(self) -> int | None:
        return self.inner.count()

    def loads(self) -> list[str]:
        """The keys :meth:`load` was called with."""
        return [key for name, key, _ in self.calls if name == "load"]


def signer(key: str) -> Signer:
    return Signer(key, salt=COOKIE_SALT, key_derivation="hmac", digest_method=hashlib.sha256)


def own(session: Session, request: Request) -> str:
    session["owner"] = request.args["who"]
    return "ok"


def peek_then_count(session: Session, request: Request) -> dict[str, Any]:
    """Report the session as it was loaded, then write to it."""
    seen = peek(session, request)
    counter(session, request)
    return seen


ROUTES = {"/own": own, "/peek": peek, "/peek-then-count": peek_then_count, "/logout": logout}


def send(app: Any, path: str, header: str) -> TestResponse:
    return get_with_cookie_header(app, path, header, buffered=True)


def flip(text: str, index: int = 0) -> str:
    """*text* with one base64 character changed (one that carries real bits)."""
    swapped = "A" if text[index] != "A" else "B"
    return text[:index] + swapped + text[index + 1 :]


# -- hostile cookies -----------------------------------------------------------------


def _tampered(value: str) -> str:
    session_id, signature = value.rsplit(".", 1)
    return f"{session_id}.{flip(signature)}"


# Each builds a Cookie header from the cookie value of a real, stored session.
HOSTILE: list[Any] = [
    pytest.param(lambda v: f"session_id={_tampered(v)}", id="tampered-signature"),
    pytest.param(
        lambda v: f"session_id={signer('another-key').sign(v.rsplit('.', 1)[0]).decode()}",
        id="signed-with-another-key",
    ),
    pytest.param(lambda v: f"session_id={v.rsplit('.', 1)[0]}", id="raw-id-unsigned"),
    pytest.param(lambda v: "session_id=", id="empty"),
    pytest.param(lambda v: "session_id=.....", id="only-dots"),
    pytest.param(lambda v: "session_id=" + "x" * 10_240, id="10kb"),
    pytest.param(lambda v: "session_id=\u00e9\u00e8.\u00e0\u00ff", id="non-ascii"),
    pytest.param(lambda v: "session_id=\x00\x01\x1f\x7f.\x00", id="control-bytes"),
    pytest.param(
        lambda v: f"session_id={signer(SECRET).sign('../../x').decode()}",
        id="path-signed-with-the-real-key",
    ),
    pytest.param(
        lambda v: f"session_id={signer(SECRET).sign(store_key('x')).decode()}",
        id="store-key-signed-with-the-real-key",
    ),
    pytest.param(
        lambda v: f"session_id=garbage; session_id={_tampered(v)}", id="two-cookies-both-invalid"
    ),
    pytest.param(
        lambda v: "; ".join(f"c{n}=v{n}" for n in range(99)) + f"; session_id={_tampered(v)}",
        id="100-pairs",
    ),
]

# More of the same kinds; what they exercise is the cookie parser, not the store.
HOSTILE_VARIANTS: list[Any] = [
    pytest.param(lambda v: f"session_id={flip(v, 5)}", id="tampered-id"),
    pytest.param(lambda v: f"session_id={v[:-1]}", id="truncated-signature"),
    pytest.param(lambda v: f"session_id={v.rsplit('.', 1)[0]}.", id="raw-id-empty-signature"),
    pytest.param(lambda v: 'session_id=""', id="empty-quoted"),
    pytest.param(lambda v: "session_id=.", id="one-dot"),
    pytest.param(lambda v: f"session_id={v}{'A' * 10_240}", id="10kb-after-a-valid-value"),
    pytest.param(lambda v: f"session_id={v}\u00e9", id="valid-value-plus-latin-1"),
    pytest.param(lambda v: f"session_id={v[:10]}\x00{v[10:]}", id="nul-inside-a-valid-value"),
    pytest.param(
        lambda v: f"session_id={signer(SECRET).sign('../' * 14 + 'x').decode()}",
        id="path-of-id-length-signed-with-the-real-key",
    ),
    pytest.param(lambda v: f"other={v}; session_id=garbage", id="valid-value-under-another-name"),
    pytest.param(
        lambda v: f"Session_ID={v}; xsession_id={v}; session_id_old={v}; session_id=..",
        id="similar-names",
    ),
    pytest.param(
        lambda v: "; ".join(f"session_id={flip(_tampered(v), n % 40)}" for n in range(100)),
        id="100-session-cookies-none-valid",
    ),
]


@pytest.mark.parametrize("forge", HOSTILE)
def test_hostile_cookie_gets_a_fresh_session_and_never_reaches_the_store(
    store: Store, forge: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    """A forged id must cost no store round trip: no probing, no path tricks, no DOS."""
    check_hostile_cookie(store, forge, caplog)


@pytest.mark.parametrize("forge", HOSTILE_VARIANTS)
def test_hostile_cookie_variant_gets_a_fresh_session_and_never_reaches_the_store(
    forge: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    check_hostile_cookie(MemoryStore(), forge, caplog)


def check_hostile_cookie(
    store: Store, forge: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    """The forged header gets a fresh session: a read touches nothing, a write creates."""
    recording = RecordingStore(store)
    client, middleware = make_client(ROUTES, store=recording)
    client.get("/own?who=victim")
    victim_key = store_key(session_id_of(client))
    victim = store.load(victim_key)
    header = forge(cookie_value(client))
    recording.calls.clear()

    with caplog.at_level(logging.INFO, logger="wsgisession"):
        response = send(middleware, "/peek", header)
    assert response.status_code == 200
    assert body(response) == FRESH
    assert set_cookies(response) == []
    assert recording.calls == []
    assert "did not verify" in caplog.text

    response = send(middleware, "/peek-then-count", header)
    assert response.status_code == 200
    assert body(response) == FRESH
    [(name, key, kwargs)] = recording.calls
    assert (name, kwargs) == (
        "save",
        {"expected_version": None, "replaces": None, "replaces_version": None},
    )
    assert key != victim_key
    assert store.load(victim_key) == victim


def test_unknown_validly_signed_id_looks_up_once_and_creates_no_record(store: Store) -> None:
    """Django's DOS test: an id nobody was given must not become a stored session."""
    recording = RecordingStore(store)
    _, middleware = make_client(ROUTES, store=recording)
    planted = "A" * 43
    header = f"session_id={signer(SECRET).sign(planted).decode()}"
    assert body(send(middleware, "/peek", header)) == GONE
    assert recording.loads() == [store_key(planted)]
    send(middleware, "/peek-then-count", header)
    assert store.load(store_key(planted)) is None
    assert live_sessions(store) == 1


# -- several cookies of our name -------------------------------------------------------


class Sessions:
    """Sessions A and B (stored), C (logged out) and a cookie of A under a fallback key."""

    def __init__(self, store: Store) -> None:
        _, self.middleware = make_client(ROUTES, store=store, secret_key_fallbacks=[FALLBACK])
        self.values: dict[str, str] = {}
        for who in ("A", "B", "C"):
            client = Client(self.middleware)
            client.get(f"/own?who={who}")
            self.values[who] = cookie_value(client)
            if who == "C":
                client.get("/logout")
        self.values["A-fallback"] = signer(FALLBACK).sign(self.id("A")).decode()
        self.values["A-tampered"] = _tampered(self.values["A"])

    def id(self, who: str) -> str:
        return self.values[who].rsplit(".", 1)[0]

    def header(self, *names: str) -> str:
        return "; ".join(f"session_id={self.values[name]}" for name in names)


# cookies sent, the session looked up, the session whose data the handler sees
DUPLICATES = [
    pytest.param(("A", "B"), "A", "A", id="first-of-two-valid-wins"),
    pytest.param(("B", "A"), "B", "B", id="first-of-two-valid-wins-reversed"),
    pytest.param(("A-tampered", "B"), "B", "B", id="invalid-then-valid"),
    pytest.param(("A-fallback", "B"), "A", "A", id="fallback-key-then-current"),
    pytest.param(("C", "A"), "C", None, id="gone-then-valid-is-the-gone-one"),
]


@pytest.mark.parametrize(("names", "looked_up", "winner"), DUPLICATES)
def test_first_cookie_that_verifies_is_used(
    store: Store, names: tuple[str, ...], looked_up: str, winner: str | None
) -> None:
    """Browsers send one cookie per matching path, most specific first."""
    recording = RecordingStore(store)
    sessions = Sessions(recording)
    recording.calls.clear()
    response = send(sessions.middleware, "/peek", sessions.header(*names))
    assert response.status_code == 200
    assert recording.loads() == [store_key(sessions.id(looked_up))]
    if winner is None:
        assert body(response) == GONE
    else:
        assert body(response) == {"data": {"owner": winner}, "new": False, "expired": False}


def test_valid_cookie_after_99_other_pairs_is_found(store: Store) -> None:
    sessions = Sessions(store)
    noise = "; ".join(f"c{n}=v{n}" for n in range(99))
    response = send(sessions.middleware, "/peek", f"{noise}; {sessions.header('B')}")
    assert body(response) == {"data": {"owner": "B"}, "new": False, "expired": False}


@pytest.mark.parametrize(("forged", "found"), [(3, True), (4, False), (99, False)])
def test_only_the_first_four_cookies_of_our_shape_are_checked(forged: int, found: bool) -> None:
    """Checking every forged cookie of a header would cost HMAC time an attacker picks."""
    store = RecordingStore(MemoryStore())
    sessions = Sessions(store)
    store.calls.clear()
    header = "; ".join(
        f"session_id={flip(sessions.values['A-tampered'], n % 40)}" for n in range(forged)
    )
    response = send(sessions.middleware, "/peek", f"{header}; {sessions.header('B')}")
    if found:
        assert body(response) == {"data": {"owner": "B"}, "new": False, "expired": False}
        assert store.loads() == [store_key(sessions.id("B"))]
    else:
        assert body(response) == {"data": {}, "new": True, "expired": False}
        assert store.loads() == []


# -- arbitrary cookie headers ------------------------------------------------------------

_LATIN_1 = st.characters(max_codepoint=0xFF, exclude_characters="\r\n")
_TOKENS = st.sampled_from([";", "=", '"', " ", ",", "\\", "session_id", "session_id=", "."])
_NOISE = st.lists(st.one_of(_TOKENS, st.text(_LATIN_1, max_size=12)), max_size=6).map("".join)
# A piece is ("noise", text) or the name of a cookie of the world below.
_PIECE = st.one_of(
    _NOISE.map(lambda text: ("noise", text)),
    _NOISE.map(lambda text: ("noise", "session_id=" + text)),
    st.sampled_from(["A", "B", "gone", "foreign", "A-tampered", "B-quoted", "B-fallback"]).map(
        lambda name: (name, "")
    ),
)


class _World:
    """A memory store holding sessions A and B, plus cookies that name nothing live."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.sessions = Sessions(self.store)
        values = self.sessions.values
        foreign, _ = make_client(
            ROUTES, store=self.store, secret_key="someone-else's-key-that-is-long-enough"
        )
        foreign.get("/own?who=foreign")
        self.cookies = {
            "A": f"session_id={values['A']}",
            "B": f"session_id={values['B']}",
            "gone": f"session_id={values['C']}",
            "foreign": f"session_id={cookie_value(foreign)}",
            "A-tampered": f"session_id={values['A-tampered']}",
            "B-quoted": f'session_id="{values["B"]}"',
            "B-fallback": f"session_id={signer(FALLBACK).sign(self.sessions.id('B')).decode()}",
        }
        # What the handler must see when each is the first cookie that verifies.
        self.sees = {
            "A": {"data": {"owner": "A"}, "new": False, "expired": False},
            "B": {"data": {"owner": "B"}, "new": False, "expired": False},
            "B-quoted": {"data": {"owner": "B"}, "new": False, "expired": False},
            "B-fallback": {"data": {"owner": "B"}, "new": False, "expired": False},
            "gone": GONE,
        }


def test_any_cookie_header_gives_a_200_and_never_another_sessions_data() -> None:
    """Arbitrary headers with real cookies spliced in: the first valid cookie decides."""
    world = _World()
    stored = dict(world.store._records)

    @settings(max_examples=200, deadline=None)
    @given(
        pieces=st.lists(_PIECE, max_size=8),
        separator=st.sampled_from(["; ", ";", " ; ", ";;", "; ; "]),
    )
    # A valid cookie after MAX_CHECKED that don't verify is never looked at.
    @example(pieces=[("foreign", "")] * MAX_CHECKED + [("A", "")], separator="; ")
    def check(pieces: list[tuple[str, str]], separator: str) -> None:
        header = separator.join(world.cookies.get(name, text) for name, text in pieces)
        response = send(world.sessions.middleware, "/peek", header)
        assert response.status_code == 200
        # Every named cookie is of our shape, so each counts among the MAX_CHECKED
        # verified (docs/behaviour.rst); noise never has the shape of a signed id.
        named = [name for name, _ in pieces if name in world.cookies][:MAX_CHECKED]
        expected = next((world.sees[name] for name in named if name in world.sees), FRESH)
        assert body(response) == expected

    check()
    assert world.store._records == stored


# -- corrupt stored records -------------------------------------------------------------

META = b'{"v":1}'
Corrupt = Callable[[bytes, bytes], tuple[bytes, bytes]]

CORRUPT: list[Any] = [
    pytest.param(lambda data, meta: (data[: len(data) // 2], meta), id="truncated"),
    pytest.param(lambda data, meta: (random.Random(4).randbytes(64), meta), id="random-bytes"),
    pytest.param(lambda data, meta: (b"[1, 2, 3]", META), id="json-list"),
    pytest.param(lambda data, meta: (b'"owner"', META), id="json-string"),
    pytest.param(lambda data, meta: (data, b'{"r":1}'), id="meta-without-format"),
    pytest.param(lambda data, meta: (data, b'{"v":0}'), id="older-format"),
    pytest.param(lambda data, meta: (data, b""), id="no-meta"),
]

# More ways to be undecodable; they exercise the decoder, not the store.
CORRUPT_VARIANTS: list[Any] = [
    pytest.param(lambda data, meta: (data, meta[:-1]), id="truncated-meta"),
    pytest.param(lambda data, meta: (data, random.Random(5).randbytes(16)), id="random-meta"),
    pytest.param(lambda data, meta: (b"\xff\xfe{}", meta), id="data-not-utf-8"),
    pytest.param(lambda data, meta: (b"", meta), id="empty-data"),
    pytest.param(lambda data, meta: (b"null", META), id="json-null"),
    pytest.param(lambda data, meta: (b'{"\\u0000": ["nope", 1]}', META), id="unknown-tag"),
    pytest.param(lambda data, meta: (data, b'{"v":2}'), id="newer-format"),
    pytest.param(lambda data, meta: (data, b'{"v":"1"}'), id="format-a-string"),
    pytest.param(lambda data, meta: (data, b"[1]"), id="meta-a-list"),
    pytest.param(lambda data, meta: (data, b'{"v":1,"t":[]}'), id="key-timeouts-a-list"),
    pytest.param(
        lambda data, meta: (data, b'{"v":1,"t":{"owner":"soon"}}'), id="key-timeout-a-string"
    ),
]


# Sealed records fail to open however they are damaged; unsealed ones (encrypt=False)
# reach the decoder, which must refuse them too.
@pytest.mark.parametrize("encrypt", [True, False], ids=["sealed", "unsealed"])
@pytest.mark.parametrize("corrupt", CORRUPT)
def test_undecodable_record_is_a_logged_miss_replaced_by_the_save(
    store: Store, corrupt: Corrupt, encrypt: bool, caplog: pytest.LogCaptureFixture
) -> None:
    check_corrupt_record(store, corrupt, caplog, encrypt=encrypt)


@pytest.mark.parametrize("corrupt", CORRUPT_VARIANTS)
def test_undecodable_record_variant_is_a_logged_miss_replaced_by_the_save(
    corrupt: Corrupt, caplog: pytest.LogCaptureFixture
) -> None:
    check_corrupt_record(MemoryStore(), corrupt, caplog, encrypt=False)


def check_corrupt_record(
    store: Store, corrupt: Corrupt, caplog: pytest.LogCaptureFixture, **options: Any
) -> None:
    """Damage a stored session; the next request starts afresh and deletes the wreck."""
    client, _ = make_client(ROUTES, store=store, **options)
    client.get("/own?who=A")
    key = store_key(session_id_of(client))
    record = store.load(key)
    assert record is not None
    data, meta = corrupt(record.data, record.meta)
    damaged = replace(record, data=data, meta=meta, version=record.version + 1)
    assert store.save(key, damaged, expected_version=record.version)

    with caplog.at_level(logging.WARNING, logger="wsgisession"):
        response = client.get("/peek-then-count")
    assert response.status_code == 200
    assert body(response) == GONE
    assert "corrupt" in caplog.text
    assert store.load(key) is None
    assert store_key(session_id_of(client)) != key
    assert body(client.get("/peek")) == {"data": {"n": 1}, "new": False, "expired": False}


def test_read_only_request_on_a_corrupt_record_expires_the_cookie() -> None:
    store = MemoryStore()
    client, _ = make_client(ROUTES, store=store)
    client.get("/own?who=A")
    key = store_key(session_id_of(client))
    record = store.load(key)
    assert record is not None
    assert store.save(
        key, replace(record, meta=b"", version=record.version + 1), expected_version=record.version
    )
    response = client.get("/peek")
    assert body(response) == GONE
    [header] = set_cookies(response)
    assert "Max-Age=0" in header


# -- data the serializer can't encode -----------------------------------------------------

UNENCODABLE: list[Any] = [
    pytest.param("json", object, id="json-object"),
    pytest.param("pickle", threading.Lock, id="pickle-lock"),
]

# More values each serializer refuses; they exercise the serializer, not the store.
UNENCODABLE_VARIANTS: list[Any] = [
    pytest.param("json", lambda: {"inner": [1, {2, 3}, object()]}, id="json-nested"),
    pytest.param("json", lambda: float("nan"), id="json-nan"),
    pytest.param("json", lambda: {1: "int key"}, id="json-int-key"),
    pytest.param("pickle", lambda: lambda: 0, id="pickle-lambda"),
]


@pytest.mark.parametrize(("serializer", "make_value"), UNENCODABLE)
def test_unencodable_value_is_a_type_error_naming_the_key_and_stores_nothing(
    store: Store, serializer: str, make_value: Callable[[], Any]
) -> None:
    check_unencodable(store, serializer, make_value)


@pytest.mark.parametrize(("serializer", "make_value"), UNENCODABLE_VARIANTS)
def test_unencodable_value_variant_is_a_type_error_naming_the_key_and_stores_nothing(
    serializer: str, make_value: Callable[[], Any]
) -> None:
    check_unencodable(MemoryStore(), serializer, make_value)


def check_unencodable(store: Store, serializer: str, make_value: Callable[[], Any]) -> None:
    """Neither a stored session nor a new one is written; the error names the key."""

    def bad(session: Session, request: Request) -> str:
        session["n"] = 2
        session["widget"] = make_value()
        return "ok"

    client, middleware = make_client({**ROUTES, "/bad": bad}, store=store, serializer=serializer)
    client.get("/own?who=A")
    key = store_key(session_id_of(client))
    before = store.load(key)
    assert before is not None

    with pytest.raises(TypeError, match="session key 'widget'"):
        client.get("/bad")
    assert store.load(key) == before
    with pytest.raises(TypeError, match="session key 'widget'"):
        Client(middleware).get("/bad")
    assert live_sessions(store) == 1
    assert body(client.get("/peek")) == {"data": {"owner": "A"}, "new": False, "expired": False}


# -- oversized sessions --------------------------------------------------------------------

LIMIT = 1000


#: The size of an untimed, unremembered session's meta, and what the seal adds to its
#: data, both of which max_size counts too.
META_SIZE = len(META)
SEAL_SIZE = len(Sealer(SECRET).seal("id", "key", 1, None, META, b"", b""))


def big(session: Session, request: Request) -> str:
    """Add a value that makes the stored session exactly ``size`` bytes, meta included."""
    overhead = len(JSONSerializer().dumps({**session, "blob": ""})) + META_SIZE + SEAL_SIZE
    session["blob"] = "x" * (int(request.args["size"]) - overhead)
    return "ok"


def _sized_client(store: Store) -> tuple[Client, SessionMiddleware, str]:
    client, middleware = make_client({**ROUTES, "/big": big}, store=store, max_size=LIMIT)
    client.get("/own?who=A")
    return client, middleware, store_key(session_id_of(client))


def test_session_of_exactly_max_size_is_saved(store: Store) -> None:
    client, _, key = _sized_client(store)
    assert client.get(f"/big?size={LIMIT}").status_code == 200
    record = store.load(key)
    assert record is not None and len(record.data) + len(record.meta) == LIMIT


def test_oversized_session_is_refused_naming_size_and_limit_and_old_state_kept(
    store: Store,
) -> None:
    client, middleware, key = _sized_client(store)
    before = store.load(key)
    with pytest.raises(SessionError, match=rf"\b{LIMIT + 1} bytes .*max_size {LIMIT}\b"):
        client.get(f"/big?size={LIMIT + 1}")
    assert store.load(key) == before
    with pytest.raises(SessionError, match=rf"\b{LIMIT * 5} bytes .*max_size {LIMIT}\b"):
        Client(middleware).get(f"/big?size={LIMIT * 5}")
    assert live_sessions(store) == 1
    assert body(client.get("/peek"))["data"] == {"owner": "A"}


def _split_values(header: str, name: str) -> list[str]:
    """Our cookie's values the slow, obvious way: every ``;``-separated part."""
    values = []
    for part in header.split(";"):
        part = part.strip()
        if part.startswith(name + "="):
            value = part[len(name) + 1 :].strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values.append(value)
    return values


@given(
    st.lists(
        st.one_of(
            st.sampled_from(["session_id", "xsession_id", "a", "session_id ", "b=session_id"]),
            st.text(alphabet=' ;="=abc\t', max_size=8),
        ),
        max_size=6,
    ),
    st.lists(st.text(alphabet=' ;="abc.\t', max_size=6), min_size=6, max_size=6),
)
def test_the_cookie_fast_path_finds_what_splitting_the_header_finds(
    names: list[str], values: list[str]
) -> None:
    from wsgisession.config import Config
    from wsgisession.cookies import SessionCookie

    cookie = SessionCookie(Config.from_options(secret_key=SECRET))
    header = "; ".join(f"{name}={value}" for name, value in zip(names, values, strict=False))
    assert cookie._values(header) == _split_values(header, "session_id")
