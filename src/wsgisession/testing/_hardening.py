"""Tests of the limits every store must hold: far expiries, long user ids, bad records."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from werkzeug.test import Client

from ..errors import SessionError
from ..events import SessionEvent
from ..ids import store_key
from ..middleware import SessionMiddleware
from ..stores.base import Store
from ..users import MAX_USER_ID
from ._helpers import create, fails_with, loads, make_record, new_key

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
        create(store, key, record)
        loaded = loads(store, key, "a record expiring in ten years")
        assert abs(loaded.expires_at - record.expires_at) <= 1, (
            f"expires_at ten years ahead ({record.expires_at}) loads as {loaded.expires_at}"
        )
        assert store.refresh(key, record.expires_at + 60, record.last_seen + 60), (
            "refresh() of a record expiring in ten years returned False"
        )

    def test_a_user_id_of_the_longest_length_round_trips(self, store: Store) -> None:
        user = "é" * (MAX_USER_ID // 2) + "u" * (MAX_USER_ID - MAX_USER_ID // 2)
        key = new_key()
        create(store, key, make_record(user_id=user))
        loaded = loads(store, key, f"a record whose user id is {MAX_USER_ID} characters long")
        assert loaded.user_id == user, (
            f"a user id of {MAX_USER_ID} characters (half of them 'é') did not load unchanged"
        )
        listed = [k for k, _ in store.user_records(user)]
        assert listed == [key], (
            f"user_records() of a user id of {MAX_USER_ID} characters lists {len(listed)} keys"
        )

    def test_undecodable_data_is_a_counted_corrupt_miss(self, store: Store) -> None:
        """The store hands back what it was given; the middleware judges and counts it."""
        events: list[SessionEvent] = []
        client, middleware = _client(store, listeners=[events.append])
        client.get("/write")
        key = _key_of(client)
        current = loads(store, key, "the record a request just saved through the middleware")
        garbage = make_record(b"\xff{not json", version=current.version + 1, meta=current.meta)
        assert store.save(key, garbage, expected_version=current.version), (
            "a save expecting the version just loaded returned False"
        )
        answer = json.loads(client.get("/").get_data())
        assert answer == {"data": {}, "expired": True}, (
            f"a record saved with undecodable data was served as {answer!r}: load() must hand "
            "back the bytes saved, for the middleware to find them corrupt"
        )
        corrupt = middleware.metrics()["corrupt"]
        assert corrupt == 1, f"the undecodable record counted {corrupt} times as corrupt, not once"
        named = [e.name for e in events if e.name == "corrupt"]
        assert named == ["corrupt"], f"the undecodable record emitted {named}, not one 'corrupt'"

    def test_max_size_counts_key_deadlines_on_this_store(self, store: Store) -> None:
        client, _ = _client(store, max_size=2048)
        client.get("/write")
        key = _key_of(client)
        before = store.load(key)
        with fails_with(
            SessionError, "a session over max_size saved without SessionError"
        ) as caught:
            client.get("/timed")
        assert "max_size 2048" in str(caught[0]), (
            f"the SessionError does not name max_size: {caught[0]}"
        )
        assert store.load(key) == before, "an oversized session changed the stored record"
