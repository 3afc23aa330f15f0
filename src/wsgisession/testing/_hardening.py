"""Tests of the limits every store must hold: far expiries, long user ids, bad records."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
from werkzeug.test import Client

from ..errors import SessionError
from ..events import SessionEvent
from ..ids import store_key
from ..middleware import SessionMiddleware
from ..stores.base import Store
from ..users import MAX_USER_ID
from ._helpers import make_record, new_key

__all__ = ["HardeningTests"]

#: Ten years, the longest duration the middleware accepts.
_TEN_YEARS = 315_360_000
_SECRET = "conformance-suite-secret-key-of-some-length"


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    session = environ["wsgisession.session"]
    if environ["PATH_INFO"] == "/write":
        session["n"] = session.get("n", 0) + 1
    elif environ["PATH_INFO"] == "/timed":
        for n in range(200):
            session.set(f"key-{n}", 1, timeout=60)
    body = json.dumps({"data": dict(session), "expired": session.expired}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def _client(store: Store, **options: Any) -> tuple[Client, SessionMiddleware]:
    middleware = SessionMiddleware(
        _app, secret_key=_SECRET, store=store, cleanup_interval=0, **options
    )
    return Client(middleware), middleware


def _key_of(client: Client) -> str:
    cookie = client.get_cookie("session_id")
    assert cookie is not None, "the middleware set no session cookie"
    return store_key(cookie.value.rsplit(".", 1)[0])


class HardeningTests:
    """Limits the middleware relies on, held by every store.

    Part of :class:`~wsgisession.testing.StoreConformance`.
    """

    def test_a_record_expiring_in_ten_years_round_trips(self, store: Store) -> None:
        """The longest lifetime an option allows must not overflow a backend's TTL."""
        key = new_key()
        record = make_record(b"far", ttl=_TEN_YEARS)
        assert store.save(key, record, expected_version=None)
        loaded = store.load(key)
        assert loaded is not None, "a record expiring in ten years was not kept"
        assert loaded.expires_at == pytest.approx(record.expires_at, abs=1)
        assert store.refresh(key, record.expires_at + 60, record.last_seen + 60)

    def test_a_user_id_of_the_longest_length_round_trips(self, store: Store) -> None:
        user = "é" * (MAX_USER_ID // 2) + "u" * (MAX_USER_ID - MAX_USER_ID // 2)
        key = new_key()
        assert store.save(key, make_record(user_id=user), expected_version=None)
        loaded = store.load(key)
        assert loaded is not None and loaded.user_id == user, "the user id did not survive"
        assert [k for k, _ in store.user_records(user)] == [key]

    def test_undecodable_data_is_a_counted_corrupt_miss(self, store: Store) -> None:
        """The store hands back what it was given; the middleware judges and counts it."""
        events: list[SessionEvent] = []
        client, middleware = _client(store, listeners=[events.append])
        client.get("/write")
        key = _key_of(client)
        current = store.load(key)
        assert current is not None
        garbage = make_record(b"\xff{not json", version=current.version + 1, meta=current.meta)
        assert store.save(key, garbage, expected_version=current.version)
        answer = json.loads(client.get("/").get_data())
        assert answer == {"data": {}, "expired": True}, "a corrupt record was served"
        assert middleware.metrics()["corrupt"] == 1, "the corrupt record was not counted"
        assert [e.name for e in events if e.name == "corrupt"] == ["corrupt"]

    def test_max_size_counts_key_deadlines_on_this_store(self, store: Store) -> None:
        client, _ = _client(store, max_size=2048)
        client.get("/write")
        key = _key_of(client)
        before = store.load(key)
        with pytest.raises(SessionError, match="max_size 2048"):
            client.get("/timed")
        assert store.load(key) == before, "an oversized session changed the stored record"
