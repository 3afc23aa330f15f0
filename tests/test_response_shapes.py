"""The shapes a response takes through the middleware, and what each still guarantees.

A body handed over as it is (a list), a body whose headers went out before the
application returned (any other iterable: ``_Body``), and a generator that calls
``start_response`` during its first step (``_Response``) all keep the promises of
docs/behaviour.rst, section "Saving": changes made while a body runs are saved when it
closes, a body that fails or is abandoned saves nothing, and a session first touched
once the headers are out still works. None of them leaves a reference cycle behind.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import SECRET, wsgi_environ
from wsgisession import Session, SessionError, SessionMiddleware
from wsgisession.ids import store_key
from wsgisession.stores.memory import MemoryStore


class Chunks:
    """An application's body that is neither a list nor a generator, as Flask's is: it
    runs *during* (a callable given the session) before its second chunk."""

    def __init__(self, session: Session, during: Callable[[Session], object]) -> None:
        self.session = session
        self.during = during
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        yield b"one"
        self.during(self.session)
        yield b"two"

    def close(self) -> None:
        self.closed += 1


def _seeded(store: MemoryStore) -> str:
    """Store a session holding ``n = 1``; return its cookie header."""
    headers: list[tuple[str, str]] = []

    def seed(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["session"]["n"] = 1
        start_response("200 OK", [])
        return [b""]

    middleware = SessionMiddleware(seed, secret_key=SECRET, store=store, cleanup_interval=0)
    middleware(wsgi_environ(), lambda status, sent, exc_info=None: headers.extend(sent))
    (cookie,) = [value for name, value in headers if name == "Set-Cookie"]
    return cookie.split(";", 1)[0]


def _streaming(
    store: MemoryStore, during: Callable[[Session], object], bodies: list[Chunks]
) -> SessionMiddleware:
    """Headers out before the app returns, the session untouched until the body runs."""

    def app(environ: dict[str, Any], start_response: Any) -> Chunks:
        start_response("200 OK", [("Content-Type", "text/plain")])
        bodies.append(Chunks(environ["session"], during))
        return bodies[-1]

    return SessionMiddleware(app, secret_key=SECRET, store=store, cleanup_interval=0)


def _stored(store: MemoryStore, environ: dict[str, Any]) -> bytes:
    record = store.load(store_key(environ["session"].id))
    assert record is not None
    return record.data


def _late_write(session: Session) -> None:
    session["late"] = "yes"


def test_a_session_first_touched_in_a_non_generator_body_is_saved_at_close() -> None:
    store = MemoryStore()
    environ = wsgi_environ(cookie=_seeded(store))
    bodies: list[Chunks] = []
    response = _streaming(store, _late_write, bodies)(environ, lambda *args: None)
    assert b"".join(response) == b"onetwo"
    response.close()  # type: ignore[attr-defined]
    assert bodies[0].closed == 1
    assert environ["session"]["late"] == "yes"
    seen: list[Any] = []

    def reader(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["session"].get("late"))
        start_response("200 OK", [])
        return [b""]

    SessionMiddleware(reader, secret_key=SECRET, store=store, cleanup_interval=0)(
        wsgi_environ(cookie=environ["HTTP_COOKIE"]), lambda *args: None
    )
    assert seen == ["yes"]


def test_an_abandoned_non_generator_body_saves_nothing_it_changed() -> None:
    store = MemoryStore()
    environ = wsgi_environ(cookie=_seeded(store))
    response = _streaming(store, _late_write, [])(environ, lambda *args: None)
    chunks = iter(response)
    assert next(chunks) == b"one"
    assert next(chunks) == b"two"
    response.close()  # type: ignore[attr-defined]  # the client went away before the end
    assert b"late" not in _stored(store, environ)


def test_a_failing_non_generator_body_saves_nothing_it_changed() -> None:
    def write_then_fail(session: Session) -> None:
        session["late"] = "yes"
        raise OSError("the body failed")

    store = MemoryStore()
    environ = wsgi_environ(cookie=_seeded(store))
    response = _streaming(store, write_then_fail, [])(environ, lambda *args: None)
    with pytest.raises(OSError, match="the body failed"):
        b"".join(response)
    response.close()  # type: ignore[attr-defined]
    assert b"late" not in _stored(store, environ)


def test_a_new_session_first_touched_in_a_non_generator_body_refuses_a_write() -> None:
    errors: list[SessionError] = []

    def write(session: Session) -> None:
        try:
            session["n"] = 1
        except SessionError as exc:
            errors.append(exc)

    store = MemoryStore()
    response = _streaming(store, write, [])(wsgi_environ(), lambda *args: None)
    assert b"".join(response) == b"onetwo"
    response.close()  # type: ignore[attr-defined]
    assert [str(e) for e in errors] == [
        "can't start a session after the response headers were sent: its cookie could "
        "no longer be set; write to it before start_response"
    ]
    assert store.count() == 0


def test_a_second_start_response_during_a_body_reaches_the_server() -> None:
    """Calling start_response again without exc_info is the server's to refuse, as it
    was when the call was passed on at the next chunk."""
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            yield b"one"
            start_response("500 Oops", [])
            yield b"two"

        return body()

    def server_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        calls.append(status)
        return lambda data: None

    middleware = SessionMiddleware(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    response = middleware(wsgi_environ(), server_start_response)
    chunks = iter(response)
    assert next(chunks) == b"one"
    assert next(chunks) == b"two"
    assert calls == ["200 OK", "500 Oops"]
    response.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda: [b"ok"], id="list"),
        pytest.param(lambda: iter([b"ok"]), id="iterator"),
        pytest.param(lambda: (chunk for chunk in [b"ok"]), id="generator"),
    ],
)
@pytest.mark.parametrize("touch", [False, True], ids=["untouched", "read"])
def test_a_finished_request_leaves_no_reference_cycle(
    body: Callable[[], Any], touch: bool
) -> None:
    """The environ holds the session: a session still holding the environ once the
    response is finished would leave garbage only the cycle collector frees, on every
    request."""
    store = MemoryStore()
    cookie = _seeded(store)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if touch:
            environ["session"].get("n")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body()

    middleware = SessionMiddleware(app, secret_key=SECRET, store=store, cleanup_interval=0)

    def one_request() -> None:
        response = middleware(wsgi_environ(cookie=cookie), lambda *args: lambda data: None)
        for _ in response:
            pass
        getattr(response, "close", lambda: None)()

    one_request()  # caches warm, lazily built objects built
    gc.collect()
    gc.disable()
    try:
        one_request()
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_session_first_read_once_its_response_is_finished_still_loads() -> None:
    """A finished session lets go of its environ (see the cycle test above) but keeps
    what a first read then needs: the request's cookie."""
    store = MemoryStore()
    cookie = _seeded(store)
    sessions: list[Session] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        sessions.append(environ["session"])
        start_response("200 OK", [])
        return [b""]

    SessionMiddleware(app, secret_key=SECRET, store=store, cleanup_interval=0)(
        wsgi_environ(cookie=cookie), lambda *args: None
    )
    assert sessions[0]["n"] == 1
    with pytest.raises(SessionError, match="response is finished"):
        sessions[0]["n"] = 2


@pytest.mark.parametrize("complete", [True, False], ids=["exhausted", "abandoned"])
def test_a_session_first_read_once_its_streamed_response_closed_still_loads(
    complete: bool,
) -> None:
    """As above, for a body the session wraps: closing it finishes the untouched session,
    which keeps the cookie, and closing it twice keeps it too."""
    store = MemoryStore()
    cookie = _seeded(store)
    sessions: list[Session] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        sessions.append(environ["session"])
        start_response("200 OK", [])
        return iter([b"one", b"two"])

    middleware = SessionMiddleware(app, secret_key=SECRET, store=store, cleanup_interval=0)
    response = middleware(wsgi_environ(cookie=cookie), lambda *args: None)
    chunks = iter(response)
    assert next(chunks) == b"one"
    if complete:
        assert list(chunks) == [b"two"]
    response.close()  # type: ignore[attr-defined]
    response.close()  # type: ignore[attr-defined]
    assert not sessions[0].accessed
    assert sessions[0]["n"] == 1
    with pytest.raises(SessionError, match="response is finished"):
        sessions[0]["n"] = 2


def test_an_error_page_started_once_the_response_is_finished_reaches_the_server() -> None:
    """A late start_response with exc_info goes to the server, whose rules decide (PEP
    3333: it re-raises once headers were sent), as before the session held it."""
    calls: list[tuple[str, Any]] = []
    held: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        held.append(start_response)
        start_response("200 OK", [])
        return [b"ok"]

    def server_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        calls.append((status, exc_info))
        return lambda data: None

    middleware = SessionMiddleware(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    assert middleware(wsgi_environ(), server_start_response) == [b"ok"]
    try:
        raise OSError("late")
    except OSError:
        held[0]("500 Internal Server Error", [], sys.exc_info())
    assert [status for status, _ in calls] == ["200 OK", "500 Internal Server Error"]
    assert calls[1][1][0] is OSError
