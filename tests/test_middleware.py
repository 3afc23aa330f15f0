"""The request path: laziness, cookies, headers, timeouts, saving and failure rules."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import FileWrapper

import pytest
from itsdangerous import Signer
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from tests.conftest import FakeClock
from tests.helpers import (
    SECRET,
    body,
    cookie_value,
    counter,
    dump,
    get_with_cookie_header,
    make_client,
    set_cookies,
    twin,
)
from wsgisession import Session, SessionError, SessionMiddleware, StoreError, get_session
from wsgisession.ids import store_key
from wsgisession.stores.base import Record
from wsgisession.stores.memory import MemoryStore


class CountingStore(MemoryStore):
    """A real memory store that counts the calls it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def load(self, key: str) -> Record | None:
        self.calls.append("load")
        return super().load(key)

    def save(self, key: str, record: Record, **kwargs: Any) -> bool:
        self.calls.append("save")
        return super().save(key, record, **kwargs)

    def refresh(self, key: str, expires_at: float, last_seen: float) -> bool:
        self.calls.append("refresh")
        return super().refresh(key, expires_at, last_seen)


def untouched(session: Session, request: Request) -> str:
    return "hello"


def read_only(session: Session, request: Request) -> Any:
    return session.get("n")


def session_id_of(client: Client, name: str = "session_id") -> str:
    return cookie_value(client, name).rsplit(".", 1)[0]


# -- laziness and new sessions -----------------------------------------------------


def test_untouched_session_costs_no_store_call_and_no_headers() -> None:
    store = CountingStore()
    client, _ = make_client({"/": untouched, "/inc": counter}, store=store)
    client.get("/inc")
    store.calls.clear()
    response = client.get("/")
    assert store.calls == []
    assert set_cookies(response) == []
    assert "Vary" not in response.headers


def test_new_session_that_stays_empty_is_not_stored_and_sets_no_cookie() -> None:
    store = CountingStore()
    client, _ = make_client({"/": read_only}, store=store)
    response = client.get("/")
    assert set_cookies(response) == []
    assert response.headers["Vary"] == "Cookie"
    assert "save" not in store.calls
    assert store.count() == 0


def test_first_write_stores_the_session_and_sets_a_browser_lifetime_cookie() -> None:
    store = MemoryStore()
    client, _ = make_client({"/inc": counter}, store=store)
    response = client.get("/inc")
    [header] = set_cookies(response)
    assert header.startswith("session_id=")
    assert "HttpOnly" in header and "Path=/" in header and "SameSite=Lax" in header
    assert "Max-Age" not in header and "Expires" not in header
    assert "Secure" not in header
    assert response.headers["Cache-Control"] == 'no-cache="Set-Cookie"'
    assert store.count() == 1


def test_counter_counts_and_sets_the_cookie_once() -> None:
    client, _ = make_client({"/inc": counter})
    assert body(client.get("/inc")) == 1
    second = client.get("/inc")
    assert body(second) == 2
    assert set_cookies(second) == []
    assert "Cache-Control" not in second.headers
    assert body(client.get("/inc")) == 3


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


def test_the_store_only_sees_the_hash_of_the_id() -> None:
    store = MemoryStore()
    client, _ = make_client({"/inc": counter}, store=store)
    client.get("/inc")
    session_id = session_id_of(client)
    assert list(store._records) == [store_key(session_id)]
    record = store._records[store_key(session_id)]
    assert session_id.encode() not in record.data + record.meta


# -- cookies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("...", id="dots"),
        pytest.param("x" * 10_000, id="10kb"),
        pytest.param("not-signed-at-all", id="unsigned"),
        pytest.param("../../etc/passwd", id="path"),
        pytest.param("\u00e9\u00e8.\u00e0", id="non-ascii"),
    ],
)
def test_invalid_cookie_gets_a_fresh_session_without_a_store_lookup(value: str) -> None:
    store = CountingStore()
    client, _ = make_client({"/": read_only}, store=store)
    response = get_with_cookie_header(client.application, "/", f"session_id={value}")
    assert response.status_code == 200
    assert body(response) is None
    assert "load" not in store.calls


def test_tampered_signature_gets_a_fresh_session(caplog: pytest.LogCaptureFixture) -> None:
    store = CountingStore()
    client, _ = make_client({"/inc": counter}, store=store)
    client.get("/inc")
    good = cookie_value(client)
    tampered = good[:-2] + ("AA" if good[-2:] != "AA" else "BB")
    client.set_cookie("session_id", tampered)
    store.calls.clear()
    with caplog.at_level(logging.INFO, logger="wsgisession"):
        assert body(client.get("/inc")) == 1
    assert store.calls.count("load") == 0
    assert "did not verify" in caplog.text
    assert good not in caplog.text


def test_cookie_signed_with_another_key_is_ignored() -> None:
    client, _ = make_client({"/inc": counter})
    client.get("/inc")
    other, _ = make_client(
        {"/inc": counter}, secret_key="another-key-entirely-long-enough-to-pass"
    )
    other.set_cookie("session_id", cookie_value(client))
    assert body(other.get("/inc")) == 1


def test_first_cookie_that_verifies_is_used() -> None:
    store = MemoryStore()
    client, middleware = make_client({"/inc": counter, "/": dump}, store=store)
    client.get("/inc")
    good = cookie_value(client)
    header = f"session_id=garbage; session_id={good[:-3]}abc; session_id={good}"
    assert body(get_with_cookie_header(middleware, "/", header)) == {"n": 1}


def test_fallback_key_cookie_is_accepted_and_reissued_under_the_current_key() -> None:
    store = MemoryStore()
    old_client, _ = make_client(
        {"/inc": counter}, store=store, secret_key="the-old-key-from-before-the-rotation"
    )
    old_client.get("/inc")
    old_value = cookie_value(old_client)
    client, _ = make_client(
        {"/inc": counter, "/": untouched},
        store=store,
        secret_key="the-new-key-from-after-the-rotation",
        secret_key_fallbacks=["the-old-key-from-before-the-rotation"],
    )
    client.set_cookie("session_id", old_value)
    assert set_cookies(client.get("/")) == []  # not re-issued when the session isn't used
    response = client.get("/inc")
    assert body(response) == 2
    [header] = set_cookies(response)
    new_value = cookie_value(client)
    assert new_value != old_value
    assert new_value.rsplit(".", 1)[0] == old_value.rsplit(".", 1)[0]
    Signer("new-key", salt=b"wsgisession.session-id", key_derivation="hmac")
    assert set_cookies(client.get("/inc")) == []


@pytest.mark.parametrize(
    ("options", "scheme", "expected", "absent"),
    [
        pytest.param({}, "https", ["Secure"], [], id="auto-secure-over-https"),
        pytest.param({}, "http", [], ["Secure"], id="auto-plain-over-http"),
        pytest.param({"cookie_secure": True}, "http", ["Secure"], [], id="forced-secure"),
        pytest.param(
            {"cookie_name": "__Host-sid"}, "http", ["Secure", "Path=/"], ["Domain"], id="host"
        ),
        pytest.param(
            {"cookie_samesite": "None"}, "https", ["SameSite=None", "Secure"], [], id="none-https"
        ),
        pytest.param({"cookie_samesite": "None"}, "http", [], ["SameSite"], id="none-http"),
        pytest.param({"cookie_samesite": None}, "https", [], ["SameSite"], id="no-samesite"),
        pytest.param({"cookie_samesite": "Strict"}, "http", ["SameSite=Strict"], [], id="strict"),
        pytest.param(
            {"cookie_partitioned": True}, "https", ["Partitioned", "Secure"], [], id="chips"
        ),
        pytest.param({"cookie_partitioned": True}, "http", [], ["Partitioned"], id="chips-http"),
        pytest.param({"cookie_httponly": False}, "http", [], ["HttpOnly"], id="no-httponly"),
        pytest.param(
            {"cookie_domain": "example.org", "cookie_path": "/app"},
            "http",
            ["Domain=example.org", "Path=/app"],
            [],
            id="domain-path",
        ),
        pytest.param({"cookie_max_age": 600}, "http", ["Max-Age=600"], [], id="max-age"),
    ],
)
def test_cookie_attributes(
    options: dict[str, Any], scheme: str, expected: list[str], absent: list[str]
) -> None:
    client, middleware = make_client({"/inc": counter}, **options)
    response = client.get("/inc", base_url=f"{scheme}://example.org/")
    [header] = set_cookies(response)
    parts = [part.strip() for part in header.split(";")]
    for attribute in expected:
        assert attribute in parts
    for attribute in absent:
        assert not any(part.startswith(attribute) for part in parts)
    assert header.startswith(middleware.config.cookie_name + "=")


# -- headers ---------------------------------------------------------------------------


def test_app_headers_are_kept_and_vary_is_extended() -> None:
    def handler(session: Session, request: Request) -> Response:
        session["x"] = 1
        response = Response("ok")
        response.headers["Vary"] = "Accept-Encoding"
        response.headers["Cache-Control"] = "private"
        response.set_cookie("theme", "dark")
        return response

    client, _ = make_client({"/": handler})
    response = client.get("/")
    assert response.headers.getlist("Vary") == ["Accept-Encoding, Cookie"]
    assert response.headers.getlist("Cache-Control") == ["private"]
    cookies = set_cookies(response)
    assert len(cookies) == 2
    assert any(c.startswith("theme=dark") for c in cookies)


def test_vary_already_naming_cookie_is_left_alone() -> None:
    def handler(session: Session, request: Request) -> Response:
        session.get("x")
        return Response("ok", headers={"Vary": "cookie"})

    client, _ = make_client({"/": handler})
    assert client.get("/").headers.getlist("Vary") == ["cookie"]


# -- timeouts ---------------------------------------------------------------------------


def test_idle_session_expires_and_its_cookie_is_expired(clock: FakeClock) -> None:
    seen: list[bool] = []

    def look(session: Session, request: Request) -> Any:
        seen.append(session.expired)
        return dict(session)

    client, _ = make_client({"/inc": counter, "/": look}, timeout=60)
    client.get("/inc")
    clock.advance(61)
    response = client.get("/")
    assert body(response) == {}
    assert seen == [True]
    [header] = set_cookies(response)
    assert "Max-Age=0" in header
    assert client.get_cookie("session_id") is None


def test_activity_keeps_an_idle_session_alive(clock: FakeClock) -> None:
    client, _ = make_client({"/inc": counter}, timeout=60)
    for expected in range(1, 6):
        assert body(client.get("/inc")) == expected
        clock.advance(45)


def test_read_past_half_life_refreshes_without_rewriting(clock: FakeClock) -> None:
    store = CountingStore()
    client, _ = make_client({"/inc": counter, "/": read_only}, store=store, timeout=100)
    client.get("/inc")
    key = store_key(session_id_of(client))
    before = store.load(key)
    assert before is not None
    clock.advance(30)
    store.calls.clear()
    client.get("/")
    assert "refresh" not in store.calls  # still more than half its life left
    clock.advance(30)
    response = client.get("/")
    assert store.calls.count("refresh") == 1 and "save" not in store.calls
    assert set_cookies(response) == []  # a browser-lifetime cookie needs no re-issue
    after = store.load(key)
    assert after is not None
    assert after.version == before.version and after.data == before.data
    assert after.expires_at == pytest.approx(clock() + 100, abs=1)
    clock.advance(60)
    assert body(client.get("/")) == 1


def test_remember_makes_a_persistent_cookie_and_a_long_server_lifetime(
    clock: FakeClock,
) -> None:
    def login(session: Session, request: Request) -> str:
        session["user"] = "ann"
        session.remember = request.args.get("remember") == "1"
        return "ok"

    client, _ = make_client({"/login": login, "/": dump}, timeout=60, remember_me_timeout=86400)
    [header] = set_cookies(client.get("/login?remember=1"))
    assert "Max-Age=86400" in header
    clock.advance(3600)
    response = client.get("/")
    assert body(response) == {"user": "ann"}
    # Past half of a day? No: only an hour, so no refresh and no re-issue.
    assert set_cookies(response) == []
    clock.advance(50000)
    response = client.get("/")
    assert body(response) == {"user": "ann"}
    [reissued] = set_cookies(response)  # refreshed, so the persistent cookie moves too
    assert "Max-Age=86400" in reissued


def test_turning_remember_off_reissues_a_browser_cookie(clock: FakeClock) -> None:
    def remember(session: Session, request: Request) -> str:
        session.remember = request.args["on"] == "1"
        session["x"] = 1
        return "ok"

    client, _ = make_client({"/r": remember, "/": dump}, timeout=60)
    assert "Max-Age" in set_cookies(client.get("/r?on=1"))[0]
    [header] = set_cookies(client.get("/r?on=0"))
    assert "Max-Age" not in header
    clock.advance(61)
    assert body(client.get("/")) == {}


def test_absolute_timeout_ends_even_an_active_session(clock: FakeClock) -> None:
    client, _ = make_client({"/inc": counter}, timeout=60, absolute_timeout=100)
    assert body(client.get("/inc")) == 1
    clock.advance(50)
    assert body(client.get("/inc")) == 2
    clock.advance(40)
    assert body(client.get("/inc")) == 3
    clock.advance(11)
    assert body(client.get("/inc")) == 1


def test_regenerate_keeps_created_at_so_absolute_deadline_does_not_move(
    clock: FakeClock,
) -> None:
    def login(session: Session, request: Request) -> float:
        session.regenerate()
        session["user"] = "ann"
        return session.created_at

    client, _ = make_client({"/inc": counter, "/login": login}, absolute_timeout=100)
    client.get("/inc")
    clock.advance(60)
    client.get("/login")
    clock.advance(41)
    assert body(client.get("/inc")) == 1


def test_per_key_timeout(clock: FakeClock) -> None:
    def flash(session: Session, request: Request) -> str:
        session.set("flash", "saved!", timeout=10)
        session["keep"] = 1
        return "ok"

    def look(session: Session, request: Request) -> Any:
        return {"in": "flash" in session, "len": len(session), "keys": sorted(session)}

    def overwrite(session: Session, request: Request) -> str:
        session["flash"] = "forever"
        return "ok"

    client, _ = make_client({"/flash": flash, "/": look, "/overwrite": overwrite})
    client.get("/flash")
    assert body(client.get("/")) == {"in": True, "len": 2, "keys": ["flash", "keep"]}
    clock.advance(11)
    assert body(client.get("/")) == {"in": False, "len": 1, "keys": ["keep"]}
    client.get("/flash")
    client.get("/overwrite")
    clock.advance(11)
    assert body(client.get("/"))["in"] is True


def test_per_key_timeout_raises_key_error(clock: FakeClock) -> None:
    seen: list[str] = []

    def look(session: Session, request: Request) -> str:
        try:
            session["flash"]
        except KeyError:
            seen.append("missing")
        return "ok"

    def flash(session: Session, request: Request) -> str:
        session.set("flash", "x", timeout=5)
        return "ok"

    client, _ = make_client({"/flash": flash, "/": look})
    client.get("/flash")
    clock.advance(6)
    client.get("/")
    assert seen == ["missing"]


def test_save_every_request_extends_on_every_touch(clock: FakeClock) -> None:
    store = CountingStore()
    client, _ = make_client(
        {"/inc": counter, "/": read_only}, store=store, timeout=100, save_every_request=True
    )
    client.get("/inc")
    for _ in range(5):
        clock.advance(80)
        assert body(client.get("/")) == 1
    fresh = Client(client.application)
    fresh.get("/")
    assert store.count() == 1


# -- saving rules -------------------------------------------------------------------------


def test_nothing_is_saved_when_the_app_raises() -> None:
    def boom(session: Session, request: Request) -> str:
        session["n"] = 99
        raise RuntimeError("boom")

    client, _ = make_client({"/inc": counter, "/boom": boom, "/": dump})
    client.get("/inc")
    with pytest.raises(RuntimeError):
        client.get("/boom")
    assert body(client.get("/")) == {"n": 1}


def test_nothing_is_saved_on_a_5xx_answer() -> None:
    def fail(session: Session, request: Request) -> Response:
        session["n"] = 99
        session.regenerate()
        return Response("down", status=503)

    client, _ = make_client({"/inc": counter, "/fail": fail, "/": dump})
    client.get("/inc")
    old = cookie_value(client)
    response = client.get("/fail")
    assert response.status_code == 503
    assert set_cookies(response) == []
    assert cookie_value(client) == old
    assert body(client.get("/")) == {"n": 1}


def test_new_session_is_not_stored_on_a_5xx_answer() -> None:
    store = MemoryStore()

    def fail(session: Session, request: Request) -> Response:
        session["n"] = 1
        return Response("down", status=500)

    client, _ = make_client({"/fail": fail}, store=store)
    assert set_cookies(client.get("/fail")) == []
    assert store.count() == 0


def test_clear_saves_an_empty_session() -> None:
    def clear(session: Session, request: Request) -> str:
        session.clear()
        return "ok"

    store = MemoryStore()
    client, _ = make_client({"/inc": counter, "/clear": clear, "/": dump}, store=store)
    client.get("/inc")
    client.get("/clear")
    assert body(client.get("/")) == {}
    assert store.count() == 1


def test_forced_modified_saves_nested_in_place_changes() -> None:
    def start(session: Session, request: Request) -> str:
        session["cart"] = []
        return "ok"

    def add_silently(session: Session, request: Request) -> str:
        session["cart"].append("quiet")
        return "ok"

    def add(session: Session, request: Request) -> str:
        session["cart"].append("apple")
        session.modified = True
        return "ok"

    client, _ = make_client({"/start": start, "/quiet": add_silently, "/add": add, "/": dump})
    client.get("/start")
    client.get("/quiet")
    assert body(client.get("/")) == {"cart": []}
    client.get("/add")
    assert body(client.get("/")) == {"cart": ["apple"]}


def test_changes_during_the_body_are_saved_when_the_response_closes() -> None:
    def streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/inc":
            session["n"] = session.get("n", 0) + 1
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"one"
            session["late"] = "yes"
            yield b"two"
        else:
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield repr(sorted(session.items())).encode()

    client = Client(
        SessionMiddleware(streaming, secret_key=SECRET, store="memory://", cleanup_interval=0)
    )
    client.get("/inc", buffered=True)
    assert client.get("/").get_data(as_text=True) == "[('late', 'yes'), ('n', 1)]"


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(lambda s: s.__setitem__("n", 1), id="first-write"),
        pytest.param(lambda s: s.regenerate(), id="regenerate"),
        pytest.param(lambda s: setattr(s, "remember", True), id="remember"),
    ],
)
def test_what_needs_a_cookie_after_the_headers_raises(action: Any) -> None:
    errors: list[BaseException] = []

    def streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/inc":
            session["n"] = 1
            start_response("200 OK", [("Content-Type", "text/plain")])
            return
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"x"
        try:
            action(session)
        except SessionError as exc:
            errors.append(exc)

    store = MemoryStore()
    client = Client(
        SessionMiddleware(streaming, secret_key=SECRET, store=store, cleanup_interval=0)
    )
    client.get("/inc", buffered=True)
    fresh = Client(client.application)
    fresh.get("/late", buffered=True)  # a new session: all three need a cookie or can't change
    assert len(errors) == 1
    assert "headers" in str(errors[0])


def _late_writer(body: str) -> tuple[Any, list[Session]]:
    """An app answering with a list or a generator, keeping each request's session."""
    sessions: list[Session] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        session = environ["session"]
        sessions.append(session)
        if environ["PATH_INFO"] == "/start":
            session["n"] = 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"] if body == "list" else iter([b"ok"])

    return app, sessions


@pytest.mark.parametrize("body", ["list", "generator"])
@pytest.mark.parametrize(
    "action",
    [
        pytest.param(lambda s: s.__setitem__("n", 2), id="set"),
        pytest.param(lambda s: s.__delitem__("n"), id="delete"),
        pytest.param(lambda s: setattr(s, "modified", True), id="modified"),
        pytest.param(lambda s: setattr(s, "user_id", "ann"), id="user_id"),
    ],
)
def test_a_change_once_the_response_is_finished_raises_and_stores_nothing(
    body: str, action: Any
) -> None:
    """With the response closed, nothing could save a change: it must not vanish silently."""
    app, sessions = _late_writer(body)
    store = MemoryStore()
    client = Client(SessionMiddleware(app, secret_key=SECRET, store=store, cleanup_interval=0))
    client.get("/start", buffered=True)
    client.get("/read", buffered=True)  # untouched by the app: used only once it is over
    finished = sessions[-1]
    assert finished["n"] == 1  # reading stays allowed
    with pytest.raises(SessionError, match="response is finished"):
        action(finished)
    client.get("/read", buffered=True)
    assert sessions[-1]["n"] == 1
    assert sessions[-1].user_id is None


def test_a_body_whose_close_raises_still_finishes_the_session() -> None:
    sessions: list[Session] = []

    class Failing:
        def __iter__(self) -> Iterator[bytes]:
            yield b"ok"

        def close(self) -> None:
            raise OSError("close failed")

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        sessions.append(environ["session"])
        environ["session"]["n"] = 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Failing()

    middleware = SessionMiddleware(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    body = middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *args: None)
    assert b"".join(body) == b"ok"
    with pytest.raises(OSError, match="close failed"):
        body.close()  # type: ignore[attr-defined]
    with pytest.raises(SessionError, match="response is finished"):
        sessions[0]["n"] = 2


def test_a_file_wrapper_body_reaches_the_server_unwrapped(tmp_path: Path) -> None:
    """A server can only sendfile() the wsgi.file_wrapper object it made itself."""
    (tmp_path / "page.txt").write_bytes(b"from a file")
    sessions: list[Session] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        session = environ["session"]
        sessions.append(session)
        session["n"] = 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"]((tmp_path / "page.txt").open("rb"))

    middleware = SessionMiddleware(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    environ["wsgi.file_wrapper"] = FileWrapper
    headers: list[tuple[str, str]] = []

    body = middleware(environ, lambda status, sent, exc_info=None: headers.extend(sent))

    assert isinstance(body, FileWrapper)
    assert b"".join(body) == b"from a file"
    body.close()
    assert any(name == "Set-Cookie" for name, _ in headers)  # saved before the headers
    with pytest.raises(SessionError, match="response is finished"):
        sessions[0]["n"] = 2


def test_max_size_refuses_an_oversized_session_and_keeps_the_old_one() -> None:
    def big(session: Session, request: Request) -> str:
        session["blob"] = "x" * 2000
        return "ok"

    client, _ = make_client({"/inc": counter, "/big": big, "/": dump}, max_size=1000)
    client.get("/inc")
    with pytest.raises(SessionError, match="over max_size 1000"):
        client.get("/big")
    assert body(client.get("/")) == {"n": 1}


def test_unencodable_value_raises_type_error_naming_the_key() -> None:
    def bad(session: Session, request: Request) -> str:
        session["widget"] = object()
        return "ok"

    client, _ = make_client({"/inc": counter, "/bad": bad, "/": dump})
    client.get("/inc")
    with pytest.raises(TypeError, match="widget"):
        client.get("/bad")
    assert body(client.get("/")) == {"n": 1}


def test_store_failure_reaches_the_app_as_store_error(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    client, _ = make_client({"/inc": counter}, store=f"file:{blocker}/sessions")
    with pytest.raises(StoreError) as info:
        client.get("/inc")
    assert isinstance(info.value.__cause__, OSError)


# -- lifecycle ------------------------------------------------------------------------------


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


def test_regenerate_gives_a_new_id_and_the_old_one_stops_working() -> None:
    store = MemoryStore()
    created: list[float] = []

    def login(session: Session, request: Request) -> str:
        created.append(session.created_at)
        session.regenerate()
        session["user"] = "ann"
        created.append(session.created_at)
        return "ok"

    client, _ = make_client({"/inc": counter, "/login": login, "/": dump}, store=store)
    client.get("/inc")
    planted = cookie_value(client)
    response = client.get("/login")
    assert len(set_cookies(response)) == 1
    assert cookie_value(client) != planted
    assert body(client.get("/")) == {"n": 1, "user": "ann"}
    assert created[0] == created[1]
    attacker = Client(client.application)
    attacker.set_cookie("session_id", planted)
    assert body(attacker.get("/")) == {}
    assert store.count() == 1


def test_corrupt_record_is_a_missing_session_and_is_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    client, _ = make_client({"/inc": counter}, store=store)
    client.get("/inc")
    key = store_key(session_id_of(client))
    record = store._records[key]
    store._records[key] = Record(
        data=b"\x00garbage",
        version=record.version,
        created_at=record.created_at,
        expires_at=record.expires_at,
        last_seen=record.last_seen,
        meta=record.meta,
    )
    with caplog.at_level(logging.WARNING, logger="wsgisession"):
        assert body(client.get("/inc")) == 1
    assert "corrupt" in caplog.text
    assert key not in store._records
    assert store.count() == 1


def test_initializer_items_are_deep_copied_and_not_a_change() -> None:
    store = MemoryStore()
    defaults = {"cart": [], "count": 0}

    def add(session: Session, request: Request) -> Any:
        session["cart"].append("x") if request.args.get("mutate") else None
        return dict(session)

    client, _ = make_client({"/": add, "/inc": counter}, store=store, initializer=defaults)
    assert body(client.get("/")) == {"cart": [], "count": 0}
    assert store.count() == 0
    client.get("/?mutate=1")
    assert defaults == {"cart": [], "count": 0}
    client.get("/inc")
    assert body(client.get("/")) == {"cart": [], "count": 0, "n": 1}


def test_callable_initializer() -> None:
    client, _ = make_client({"/": dump}, initializer=lambda: {"theme": "light"})
    assert body(client.get("/")) == {"theme": "light"}


def test_bind_ip_treats_another_address_as_expired() -> None:
    store = MemoryStore()
    client, middleware = make_client({"/inc": counter, "/": dump}, store=store, bind_ip=True)
    client.get("/inc", environ_overrides={"REMOTE_ADDR": "10.0.0.1"})
    stolen = cookie_value(client)
    thief = Client(middleware)
    thief.set_cookie("session_id", stolen)
    assert body(thief.get("/", environ_overrides={"REMOTE_ADDR": "10.0.0.2"})) == {}
    assert body(client.get("/", environ_overrides={"REMOTE_ADDR": "10.0.0.1"})) == {"n": 1}


def test_pickle_serializer_round_trips() -> None:
    import datetime

    def put(session: Session, request: Request) -> str:
        session["when"] = datetime.datetime(2026, 1, 2, 3, 4, 5)
        session["pair"] = (1, 2)
        return "ok"

    def look(session: Session, request: Request) -> Any:
        return [repr(session["when"]), repr(session["pair"])]

    client, _ = make_client({"/put": put, "/": look}, serializer="pickle")
    client.get("/put")
    assert body(client.get("/")) == ["datetime.datetime(2026, 1, 2, 3, 4, 5)", "(1, 2)"]


def test_logs_never_hold_a_secret_or_a_full_id(caplog: pytest.LogCaptureFixture) -> None:
    def logout(session: Session, request: Request) -> str:
        session.invalidate()
        return "ok"

    with caplog.at_level(logging.DEBUG, logger="wsgisession"):
        client, _ = make_client({"/inc": counter, "/logout": logout}, bind_ip=True)
        client.get("/inc")
        session_id = session_id_of(client)
        value = cookie_value(client)
        client.get("/inc", environ_overrides={"REMOTE_ADDR": "10.9.9.9"})
        client.set_cookie("session_id", value[:-1] + "x")
        client.get("/inc")
        client.get("/logout")
    assert SECRET not in caplog.text
    assert session_id not in caplog.text
    assert store_key(session_id) not in caplog.text


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_requests_on_different_keys_both_keep_their_changes() -> None:
    store = MemoryStore()
    inner: dict[str, Client] = {}

    def slow(session: Session, request: Request) -> str:
        session.get("n")  # loaded before the other request saves
        inner["client"].get("/other")
        session["slow"] = "done"
        return "ok"

    def other(session: Session, request: Request) -> str:
        session["other"] = "done"
        return "ok"

    client, middleware = make_client(
        {"/inc": counter, "/slow": slow, "/other": other, "/": dump}, store=store
    )
    client.get("/inc")
    inner["client"] = twin(client)
    client.get("/slow")
    assert body(client.get("/")) == {"n": 1, "other": "done", "slow": "done"}


def test_concurrent_requests_on_the_same_key_later_save_wins() -> None:
    inner: dict[str, Client] = {}

    def slow(session: Session, request: Request) -> str:
        session.get("n")
        inner["client"].get("/fast")
        session["k"] = "slow"
        return "ok"

    def fast(session: Session, request: Request) -> str:
        session["k"] = "fast"
        return "ok"

    client, middleware = make_client({"/inc": counter, "/slow": slow, "/fast": fast, "/": dump})
    client.get("/inc")
    inner["client"] = twin(client)
    client.get("/slow")
    assert body(client.get("/")) == {"n": 1, "k": "slow"}


def test_a_concurrent_logout_is_never_undone() -> None:
    store = MemoryStore()
    inner: dict[str, Client] = {}

    def slow(session: Session, request: Request) -> str:
        session.get("n")
        inner["client"].get("/logout")
        session["late"] = "write"
        return "ok"

    def logout(session: Session, request: Request) -> str:
        session.invalidate()
        return "ok"

    client, middleware = make_client(
        {"/inc": counter, "/slow": slow, "/logout": logout}, store=store
    )
    client.get("/inc")
    inner["client"] = twin(client)
    client.get("/slow")
    assert store.count() == 0


@pytest.mark.parametrize("regenerate", [False, True], ids=["save", "regenerate"])
def test_a_session_ended_meanwhile_gets_its_cookie_expired(regenerate: bool) -> None:
    """A remembered session would re-issue its cookie on save; ended, it must expire it."""
    store = MemoryStore()
    inner: dict[str, Client] = {}

    def remember(session: Session, request: Request) -> str:
        session.remember = True
        session["n"] = 1
        return "ok"

    def slow(session: Session, request: Request) -> str:
        session.get("n")
        inner["client"].get("/logout")
        if regenerate:
            session.regenerate()
        session["late"] = "write"
        return "ok"

    def logout(session: Session, request: Request) -> str:
        session.invalidate()
        return "ok"

    client, middleware = make_client(
        {"/remember": remember, "/slow": slow, "/logout": logout}, store=store
    )
    client.get("/remember")
    inner["client"] = twin(client)
    response = client.get("/slow")
    [header] = set_cookies(response)
    assert "Max-Age=0" in header
    assert store.count() == 0
