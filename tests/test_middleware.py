"""Wrapping an application, the session object, laziness, ids and invalidate.

The behaviour is in docs/behaviour.rst, sections "Wrapping an application", "The
session object", "Laziness", "Ids" and "Invalidate". Each of the other sections has a
file of its own: ``test_cookies.py``, ``test_expiry.py``, ``test_saving.py``,
``test_concurrency.py``, ``test_regenerate.py``, ``test_users.py``, ``test_events.py``
and ``test_hardening.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from tests.helpers import (
    SECRET,
    CountingStore,
    body,
    cookie_value,
    counter,
    dump,
    make_client,
    session_id_of,
    set_cookies,
    untouched,
)
from wsgisession import Session, SessionError, SessionMiddleware, get_session
from wsgisession.ids import store_key
from wsgisession.stores.memory import MemoryStore

# -- wrapping an application ---------------------------------------------------------


def test_get_session_and_environ_key() -> None:
    def handler(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        assert get_session(environ) is environ["sess"]
        assert "session" not in environ
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    client = Client(
        SessionMiddleware(handler, secret_key=SECRET, environ_key="sess", cleanup_interval=0)
    )
    assert client.get("/").status_code == 200


def test_get_session_without_middleware_raises() -> None:
    with pytest.raises(SessionError, match="SessionMiddleware"):
        get_session({})


# -- laziness --------------------------------------------------------------------------


def test_untouched_session_costs_no_store_call_and_no_headers() -> None:
    store = CountingStore()
    client, _ = make_client({"/": untouched, "/inc": counter}, store=store)
    client.get("/inc")
    store.calls.clear()
    response = client.get("/")
    assert store.calls == []
    assert set_cookies(response) == []
    assert "Vary" not in response.headers


def test_get_answers_as_a_dict_would_and_is_a_first_touch() -> None:
    def look(session: Session, request: Request) -> Any:
        with pytest.raises(TypeError):
            session.get(["unhashable"])  # type: ignore[arg-type]
        return [session.get("n"), session.get("missing"), session.get("missing", 7)]

    client, _ = make_client({"/inc": counter, "/get": look})
    first = client.get("/get")
    assert body(first) == [None, None, 7]
    assert first.headers["Vary"] == "Cookie"  # the get loaded the session
    client.get("/inc")
    assert body(client.get("/get")) == [1, None, 7]


def test_session_state_flags() -> None:
    seen: dict[str, Any] = {}

    def look(session: Session, request: Request) -> str:
        seen["accessed_before"] = session.accessed
        seen.update(id=session.id, new=session.new, expired=session.expired)
        seen["accessed_after"] = session.accessed
        session["x"] = 1
        seen["modified"] = session.modified
        return "ok"

    client, _ = make_client({"/": look, "/inc": counter})
    client.get("/")
    assert seen == {
        "accessed_before": False,
        "id": None,
        "new": True,
        "expired": False,
        "accessed_after": True,
        "modified": True,
    }
    client.get("/")
    assert seen["id"] == session_id_of(client)
    assert seen["new"] is False


# -- ids -------------------------------------------------------------------------------


def test_the_store_only_sees_the_hash_of_the_id() -> None:
    store = MemoryStore()
    client, _ = make_client({"/inc": counter}, store=store)
    client.get("/inc")
    session_id = session_id_of(client)
    assert list(store._records) == [store_key(session_id)]
    record = store._records[store_key(session_id)]
    assert session_id.encode() not in record.data + record.meta


# -- invalidate ---------------------------------------------------------------------------


def test_invalidate_deletes_at_once_and_expires_the_cookie() -> None:
    store = MemoryStore()

    def logout(session: Session, request: Request) -> str:
        session.invalidate()
        return "bye"

    client, _ = make_client({"/inc": counter, "/logout": logout, "/": dump}, store=store)
    client.get("/inc")
    old = cookie_value(client)
    response = client.get("/logout")
    [header] = set_cookies(response)
    assert "Max-Age=0" in header
    assert store.count() == 0
    replay = Client(client.application)
    replay.set_cookie("session_id", old)
    assert body(replay.get("/")) == {}


def test_invalidate_holds_even_if_the_request_then_fails() -> None:
    store = MemoryStore()

    def logout_then_fail(session: Session, request: Request) -> str:
        session.invalidate()
        raise RuntimeError("after logout")

    client, _ = make_client({"/inc": counter, "/out": logout_then_fail}, store=store)
    client.get("/inc")
    with pytest.raises(RuntimeError):
        client.get("/out")
    assert store.count() == 0


def test_writing_after_invalidate_starts_a_fresh_session() -> None:
    store = MemoryStore()

    def relogin(session: Session, request: Request) -> str:
        session.invalidate()
        session["user"] = "bob"
        return "ok"

    client, _ = make_client({"/inc": counter, "/relogin": relogin, "/": dump}, store=store)
    client.get("/inc")
    old = cookie_value(client)
    [header] = set_cookies(client.get("/relogin"))
    assert "Max-Age=0" not in header
    assert cookie_value(client) != old
    assert body(client.get("/")) == {"user": "bob"}
    assert store.count() == 1
