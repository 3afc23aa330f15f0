"""When the session is saved, what a change may do and when, and what a failure leaves.

The behaviour is in docs/behaviour.rst, sections "Saving", "When a change is allowed"
and "Errors". Two requests saving one session at once are in ``test_concurrency.py``;
corrupt records, unencodable and oversized sessions on every store in
``test_hostile.py``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import FileWrapper

import pytest
from werkzeug.test import Client, EnvironBuilder
from werkzeug.wrappers import Request, Response

from tests.helpers import (
    SECRET,
    CountingStore,
    FakeClock,
    body,
    call_as_server,
    cookie_value,
    counter,
    deletes_the_cookie,
    dump,
    key_of,
    make_client,
    raising_after_start_response,
    read_only,
    session_id_of,
    set_cookies,
    wsgi_environ,
)
from wsgisession import Session, SessionError, SessionMiddleware, StoreError
from wsgisession._snapshot import decode_meta
from wsgisession.ids import store_key
from wsgisession.stores.base import Record
from wsgisession.stores.memory import MemoryStore

# -- what is saved -----------------------------------------------------------------------


def test_new_session_that_stays_empty_is_not_stored_and_sets_no_cookie() -> None:
    store = CountingStore()
    client, _ = make_client({"/": read_only}, store=store)
    response = client.get("/")
    assert set_cookies(response) == []
    assert response.headers["Vary"] == "Cookie"
    assert "save" not in store.calls
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


def test_in_place_changes_are_saved_with_or_without_modified() -> None:
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
    assert body(client.get("/")) == {"cart": ["quiet"]}
    client.get("/add")
    assert body(client.get("/")) == {"cart": ["quiet", "apple"]}


def test_initializer_items_are_deep_copied_and_a_change_only_when_changed() -> None:
    store = MemoryStore()
    defaults = {"cart": [], "count": 0}

    def add(session: Session, request: Request) -> Any:
        session["cart"].append("x") if request.args.get("mutate") else None
        return dict(session)

    client, _ = make_client({"/": add, "/inc": counter}, store=store, initializer=defaults)
    assert body(client.get("/")) == {"cart": [], "count": 0}
    assert store.count() == 0  # read, even a container, and unchanged: nothing stored
    # Changed in place, like any value read (web.py's initializer pattern), it is saved.
    client.get("/?mutate=1")
    assert defaults == {"cart": [], "count": 0}
    assert store.count() == 1
    client.get("/inc")
    assert body(client.get("/")) == {"cart": ["x"], "count": 0, "n": 1}


def test_initializer_items_are_not_what_makes_a_new_session_worth_storing() -> None:
    # They counted as its data: "remember" alone, a forced save or a user set and unset
    # stored a visitor who had only the defaults, and sent a cookie.
    def remember(session: Session, request: Request) -> Any:
        session.remember = True
        return "ok"

    def forced(session: Session, request: Request) -> Any:
        session.modified = True
        return "ok"

    def toggle(session: Session, request: Request) -> Any:
        session.user_id = "ann"
        session.user_id = None
        return "ok"

    def incr(session: Session, request: Request) -> Any:
        session.incr("n")
        return "ok"

    store = MemoryStore()
    routes = {
        "/remember": remember,
        "/forced": forced,
        "/toggle": toggle,
        "/incr": incr,
        "/": dump,
    }
    client, _ = make_client(routes, store=store, initializer={"theme": "light"})
    for path in ("/remember", "/forced", "/toggle"):
        response = client.get(path)
        assert store.count() == 0 and "Set-Cookie" not in response.headers, path
    client.get("/incr")
    assert body(client.get("/")) == {"theme": "light", "n": 1}


def test_a_session_written_after_invalidate_is_stored_with_the_initializer_items() -> None:
    # Stored without them, it was the next request's session all the same: web.py's
    # kill() then a notice left session.cart missing until the session expired.
    def add(session: Session, request: Request) -> Any:
        session["cart"].append("book")
        return "ok"

    def logout(session: Session, request: Request) -> Any:
        session.invalidate()
        session["notice"] = "logged out"
        return dict(session)

    client, _ = make_client(
        {"/add": add, "/logout": logout, "/": dump}, initializer={"cart": [], "theme": "light"}
    )
    client.get("/add")
    assert body(client.get("/logout")) == {"notice": "logged out"}  # as documented
    assert body(client.get("/")) == {"cart": [], "theme": "light", "notice": "logged out"}
    client.get("/add")
    assert body(client.get("/"))["cart"] == ["book"]


def test_callable_initializer() -> None:
    client, _ = make_client({"/": dump}, initializer=lambda: {"theme": "light"})
    assert body(client.get("/")) == {"theme": "light"}


def _failing_first_touch(session: Session, request: Request) -> Any:
    try:
        session.get("n")
    except (TypeError, SessionError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def test_an_initializer_returning_no_mapping_says_what_to_return() -> None:
    store = MemoryStore()
    client, _ = make_client({"/": _failing_first_touch}, store=store, initializer=lambda: None)
    response = client.get("/")
    assert body(response) == (
        "TypeError: option 'initializer' returned 'NoneType': it must return a mapping "
        "of the new session's items"
    )
    assert store.count() == 0 and "Set-Cookie" not in response.headers


def test_an_initializer_that_uses_the_session_it_starts_says_so() -> None:
    """web.py's initializers filled the session; a plain middleware's can't."""
    holder: list[Session] = []

    def fill() -> dict[str, Any]:
        holder[-1]["n"] = 0
        return {}

    def first(session: Session, request: Request) -> Any:
        holder.append(session)
        return _failing_first_touch(session, request)

    client, _ = make_client({"/": first}, initializer=fill)
    assert body(client.get("/")) == (
        "SessionError: option 'initializer' used the session it is starting: return the "
        "new session's items as a mapping instead"
    )


# -- a request that fails ------------------------------------------------------------------


def test_nothing_is_saved_when_the_app_raises() -> None:
    def boom(session: Session, request: Request) -> str:
        session["n"] = 99
        raise RuntimeError("boom")

    client, _ = make_client({"/inc": counter, "/boom": boom, "/": dump})
    client.get("/inc")
    with pytest.raises(RuntimeError):
        client.get("/boom")
    assert body(client.get("/")) == {"n": 1}


def test_changes_are_not_saved_when_the_app_raises_after_start_response() -> None:
    """The save waits for the application to return: a raise after start_response
    saves nothing (docs/behaviour.rst, section "Saving")."""

    client = Client(
        SessionMiddleware(
            raising_after_start_response(lambda session: session.update(n=2)),
            secret_key=SECRET,
            store="memory://",
            cleanup_interval=0,
        )
    )
    client.get("/login")
    with pytest.raises(RuntimeError):
        client.get("/boom")
    assert client.get("/").get_data(as_text=True) == "[('n', 1)]"


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


def test_error_page_through_exc_info_still_expires_the_logged_out_cookie() -> None:
    """An app that logs out, starts a 200, then replaces it with an error page through
    ``start_response(..., exc_info)`` (PEP 3333) still sends the expiring Set-Cookie:
    an ``invalidate()`` stays done when the request fails (docs/behaviour.rst,
    section "Errors")."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/login":
            session["n"] = 1
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"welcome"]
        session.invalidate()
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise RuntimeError("rendering failed")
        except RuntimeError:
            start_response(
                "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"error page"]

    middleware = SessionMiddleware(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    _, headers = call_as_server(middleware, wsgi_environ("/login"))
    cookie = next(v for k, v in headers if k == "Set-Cookie").split(";")[0]
    status, headers = call_as_server(middleware, wsgi_environ("/logout", cookie))
    assert status.startswith("500")
    cookies = [v for k, v in headers if k == "Set-Cookie"]
    assert any(deletes_the_cookie(c) for c in cookies), headers


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


# -- while the body is produced, and after ----------------------------------------------


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


def test_changes_after_write_are_saved_even_with_a_list_body() -> None:
    # write() sends the headers (and saves); the list returned after it runs no code,
    # but what the application changed in between is the response's to save.
    def legacy(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/write":
            session["before"] = 1
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            write(b"streamed")
            session["after"] = 2
            return []
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr(sorted(session.items())).encode()]

    middleware = SessionMiddleware(
        legacy, secret_key=SECRET, store="memory://", cleanup_interval=0
    )
    written: list[bytes] = []
    headers: list[tuple[str, str]] = []

    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Any:
        headers.extend(response_headers)
        return written.append

    # By hand, as a server does it: werkzeug's test client drops write()'s data when
    # it buffers, and closes the body only when buffering.
    body = middleware(EnvironBuilder("/write").get_environ(), start_response)
    written.extend(body)
    body.close()  # type: ignore[attr-defined]
    assert written == [b"streamed"]
    cookie = next(value for name, value in headers if name == "Set-Cookie").split(";")[0]
    answer = Client(middleware, use_cookies=False).get("/", headers={"Cookie": cookie})
    assert answer.get_data(as_text=True) == "[('after', 2), ('before', 1)]"


def test_a_container_read_again_in_the_body_after_the_headers_save_is_compared_exactly() -> None:
    # The save with the headers wrote "n"; the container read again during the body
    # is compared, exactly (True for 1), when the response closes (docs/behaviour.rst,
    # "Writes that compose").
    def streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/seed":
            session["cart"] = [1]
        elif environ["PATH_INFO"] == "/change":
            session["cart"]
            session["n"] = 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"one"
        if environ["PATH_INFO"] == "/change":
            session["cart"][0] = True
        yield repr(sorted(session.items())).encode()

    client = Client(
        SessionMiddleware(streaming, secret_key=SECRET, store="memory://", cleanup_interval=0)
    )
    client.get("/seed", buffered=True)
    client.get("/change", buffered=True)
    assert client.get("/").get_data(as_text=True) == "one[('cart', [True]), ('n', 1)]"


def test_a_session_first_read_while_the_body_is_produced_is_still_refreshed(
    clock: FakeClock,
) -> None:
    """A read past half its lifetime is refreshed when the response closes, even on a
    streaming page that first reads it after start_response (docs/behaviour.rst,
    section "Saving")."""
    store = MemoryStore()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/login":
            session["user"] = "ann"
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield str(session.get("user")).encode()

    client = Client(
        SessionMiddleware(app, secret_key=SECRET, store=store, timeout=100, cleanup_interval=0)
    )
    client.get("/login", buffered=True)
    key = key_of(client)
    before = store.load(key)
    assert before is not None
    clock.advance(60)  # 40 s left: below half of 100
    assert client.get("/page", buffered=True).get_data(as_text=True) == "ann"
    after = store.load(key)
    assert after is not None
    assert after.expires_at > before.expires_at


def test_a_client_disconnect_during_the_body_saves_no_late_changes() -> None:
    """The server closing the response before the end counts as a failed request:
    changes made during the body are not saved (docs/behaviour.rst, section "Errors")."""
    store = MemoryStore()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        session = environ["session"]
        session["n"] = 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"one"
        session["late"] = "yes"
        yield b"two"
        yield b"three"

    middleware = SessionMiddleware(app, secret_key=SECRET, store=store, cleanup_interval=0)
    environ = wsgi_environ()
    response = middleware(environ, lambda status, headers, exc_info=None: None)
    chunks = iter(response)
    assert next(chunks) == b"one"
    assert next(chunks) == b"two"
    response.close()  # the client went away: the server stops and closes
    record = store.load(store_key(environ["session"].id))
    assert record is not None
    assert b"late" not in record.data and b"yes" not in record.data


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
        pytest.param(lambda s: s.invalidate(), id="invalidate"),
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


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        pytest.param(b'{"v":1}', ({}, False, None), id="plain"),
        pytest.param(b'{"v":1,"r":1,"ip":"10.0.0.1"}', ({}, True, "10.0.0.1"), id="no-timeouts"),
        pytest.param(b'{"v":1,"t":{"a":5.5}}', ({"a": 5.5}, False, None), id="by-key"),
        pytest.param(b'{"v":1,"t":[5,6.5]}', ([5, 6.5], False, None), id="sealed-times"),
        pytest.param(b'{"v":1,"t":{}}', ({}, False, None), id="empty"),
    ],
)
def test_record_meta_reads_its_deadlines_flag_and_address(blob: bytes, expected: Any) -> None:
    assert decode_meta(blob) == expected


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(b'{"v":1,"t":null}', id="null"),
        pytest.param(b'{"v":1,"t":0}', id="a-number"),
        pytest.param(b'{"v":1,"t":{"a":"soon"}}', id="a-string-time"),
        pytest.param(b'{"v":1,"t":["soon"]}', id="a-string-in-the-list"),
        pytest.param(b'{"v":2}', id="another-format"),
        pytest.param(b"[1]", id="not-an-object"),
    ],
)
def test_record_meta_that_is_malformed_is_refused(blob: bytes) -> None:
    with pytest.raises(ValueError):
        decode_meta(blob)
