"""web.py: the sessions-cookbook counter ported in two lines, the example, ``wsgisession.webpy``.

The counter from web.py's sessions cookbook runs with only its session lines
changed, under waitress, gunicorn and web.py's own ``app.run()``, with
``web.config.debug`` off and on. In debug mode web.py's reloader imports the module
again (at the first request when it runs as ``__main__``, and whenever its file
changes), building a second application and session object: web.py's own sessions
break there, which the control test shows; ours keep counting.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import web
from werkzeug.test import Client

from tests.frameworks.flows import ExampleFlows
from tests.frameworks.servers import (
    SECRET,
    SERVERS,
    Browser,
    Server,
    check_example_counts,
    free_port,
    run_example,
    run_server,
    serve_module,
)
from wsgisession import ConfigError, SessionError, SessionMiddleware
from wsgisession.config import Config
from wsgisession.webpy import WebpySession

# The counter of web.py's sessions cookbook, as web.py's own sessions run it.
COOKBOOK = """\
import web

web.config.debug = False

urls = (
    "/count", "count",
    "/reset", "reset",
)

app = web.application(urls, locals())
session = web.session.Session(app, web.session.DiskStore("sessions"), initializer={"count": 0})


class count:
    def GET(self):
        session.count += 1
        return str(session.count)


class reset:
    def GET(self):
        session.kill()
        return "Reset"


if __name__ == "__main__":
    app.run()
"""

OURS = (
    "session = WebpySession(app, secret_key=SECRET, store='file:sessions', "
    "initializer={'count': 0}, cleanup_interval=0)"
)


def ported(debug: bool) -> str:
    """The cookbook counter on wsgisession: an import and the constructor changed."""
    text = COOKBOOK.replace(
        "import web\n", "import web\nfrom wsgisession.webpy import WebpySession\n"
    )
    text = text.replace(
        'session = web.session.Session(app, web.session.DiskStore("sessions"), '
        'initializer={"count": 0})',
        OURS.replace("SECRET", repr(SECRET)),
    )
    return with_debug(text, debug)


def with_debug(text: str, debug: bool) -> str:
    return text.replace("web.config.debug = False", f"web.config.debug = {debug}")


def test_porting_the_cookbook_counter_changes_two_lines() -> None:
    diff = list(difflib.ndiff(COOKBOOK.splitlines(), ported(False).splitlines()))
    added = [line for line in diff if line.startswith("+ ")]
    removed = [line for line in diff if line.startswith("- ")]
    assert len(added) == 2 and len(removed) == 1, diff


@contextlib.contextmanager
def serve_counter(kind: str, source: str, directory: Path) -> Iterator[Server]:
    """Serve the counter module *source* with *kind*: a WSGI server, or ``python counter.py``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "counter.py").write_text(source)
    if kind == "app.run":
        port = free_port()
        command = [sys.executable, "counter.py", f"127.0.0.1:{port}"]
        with run_server(command, port, directory) as server:
            yield server
    else:
        entry = "from counter import app\napplication = app.wsgifunc()\n"
        with serve_module(kind, directory, entry) as server:
            yield server


def touch(path: Path) -> None:
    """Move *path*'s mtime ahead, so web.py's reloader reloads it on the next request."""
    later = time.time() + 10
    os.utime(path, (later, later))


@pytest.mark.parametrize("debug", [False, True], ids=["debug-off", "debug-on"])
@pytest.mark.parametrize("kind", [*SERVERS, "app.run"])
def test_cookbook_counter_counts_and_resets(kind: str, debug: bool, tmp_path: Path) -> None:
    with serve_counter(kind, ported(debug), tmp_path) as server:
        browser = Browser(server.url)
        first = browser.get("/count")
        assert (first.status, first.body) == (200, "1"), first.body[:300]
        assert browser.get("/count").body == "2"
        cookie = browser.cookies["session_id"]

        # In debug mode the reloader runs the module again: a new app, a new session object.
        touch(tmp_path / "counter.py")
        assert browser.get("/count").body == "3"
        assert browser.get("/count").body == "4"

        reset = browser.get("/reset")
        assert reset.body == "Reset"
        expired = reset.set_cookie("session_id")
        assert expired is not None and expired["max-age"] == "0"
        assert browser.get("/count").body == "1"
        assert Browser(server.url, {"session_id": cookie}).get("/count").body == "1"
        assert any((tmp_path / "sessions").rglob("*")), "the file store was not used"


def test_control_webpys_own_sessions_break_under_the_reloader(tmp_path: Path) -> None:
    """Without this failure the debug-on cases above would prove nothing."""
    with serve_counter("app.run", with_debug(COOKBOOK, True), tmp_path) as server:
        response = Browser(server.url).get("/count")
        assert response.status == 500 and "AttributeError" in response.body


class TestWebpyExample(ExampleFlows):
    """The web.py example's flows over waitress and gunicorn."""

    example = "webpy_app"
    wsgi = ".wsgifunc()"


# -- WebpySession in-process ---------------------------------------------------------------


class _Show:
    def GET(self) -> str:
        session = web.ctx.session
        return f"{session.get('n')}|{'n' in session}|{len(session)}|{session.new}"


class _Bump:
    def GET(self) -> str:
        session = web.ctx.session
        session.n += 1
        session["m"] = session.n * 10
        return str(session.n)


class _Missing:
    def GET(self) -> str:
        session = web.ctx.session
        with pytest.raises(AttributeError, match="nothing"):
            _ = session.nothing
        session.gone = 1
        del session.gone
        with pytest.raises(AttributeError):
            del session.gone
        return "ok"


class _Login:
    def GET(self) -> str:
        session = web.ctx.session
        session.regenerate()
        session.user_id = "ann"
        session.remember = True
        session.set("note", "hi", timeout=60)
        return f"{session.remember}|{session.user_id}|{session.note}"


class _Kill:
    def GET(self) -> str:
        web.ctx.session.kill()
        return str(web.ctx.session.id)


class _Ids:
    def GET(self) -> str:
        session = web.ctx.session
        return f"{session.id == session.session_id}|{session.expired}|{session.id is not None}"


class _Quiet:
    """web.py's ``send_cookie = False``: this request saves nothing and sends no cookie."""

    def GET(self) -> str:
        session = web.ctx.session
        assert session.send_cookie is True
        session.n = 99
        session.send_cookie = False
        if web.input().get("again"):
            session.send_cookie = True
        if web.input().get("redirect"):
            raise web.seeother("/show")  # web.py's usual way out of a handler
        return str(session.send_cookie)


class _Seen:
    def GET(self) -> str:
        return repr(web.ctx.session.seen)


class _Ip:
    def GET(self) -> str:
        return str(web.ctx.session.ip)


class _Expire:
    """web.py's ``session.expired()`` ends the session and answers its message."""

    def GET(self) -> str:
        session = web.ctx.session
        assert not session.expired and session.expired == False  # noqa: E712
        session.expired()
        return "not reached"


_URLS = (
    "/show", "_Show", "/bump", "_Bump", "/missing", "_Missing",
    "/login", "_Login", "/kill", "_Kill", "/ids", "_Ids",
    "/quiet", "_Quiet", "/ip", "_Ip", "/expire", "_Expire", "/seen", "_Seen",
)  # fmt: skip


def _app(**options: Any) -> tuple[Any, WebpySession]:
    app = web.application(_URLS, globals(), autoreload=False)
    options = {"secret_key": SECRET, "store": "memory://", "cleanup_interval": 0, **options}
    return app, WebpySession(app, **options)


def test_attribute_and_mapping_access_with_an_initializer() -> None:
    app, _ = _app(initializer={"n": 0})
    client = Client(app.wsgifunc())
    assert client.get("/show").get_data(as_text=True) == "0|True|1|True"
    assert client.get("/bump").get_data(as_text=True) == "1"
    assert client.get("/bump").get_data(as_text=True) == "2"
    assert client.get("/show").get_data(as_text=True) == "2|True|2|False"


def test_missing_attribute_is_an_attribute_error() -> None:
    app, _ = _app()
    assert Client(app.wsgifunc()).get("/missing").get_data(as_text=True) == "ok"


def test_session_features_and_kill() -> None:
    app, _ = _app()
    client = Client(app.wsgifunc())
    assert client.get("/login").get_data(as_text=True) == "True|ann|hi"
    cookie = client.get_cookie("session_id")
    assert cookie is not None and cookie.expires is not None
    assert client.get("/ids").get_data(as_text=True) == "True|False|True"
    assert client.get("/kill").get_data(as_text=True) == "None"
    assert client.get_cookie("session_id") is None
    assert client.get("/show").get_data(as_text=True) == "None|False|0|True"


def test_send_cookie_false_saves_nothing_and_sends_no_cookie() -> None:
    app, session = _app(initializer={"n": 0})
    client = Client(app.wsgifunc())
    response = client.get("/quiet")
    assert response.get_data(as_text=True) == "False"
    assert "Set-Cookie" not in response.headers
    assert session.middleware.store.count() == 0
    # Raised responses too: the flag was read only after a handler that returned.
    response = client.get("/quiet?redirect=1")
    assert response.status_code == 303 and "Set-Cookie" not in response.headers
    assert session.middleware.store.count() == 0
    assert client.get("/quiet?again=1").get_data(as_text=True) == "True"
    assert client.get("/show").get_data(as_text=True).startswith("99|")


class _UserId:
    """web.py apps keep their user's id under ``user_id``, often an int."""

    def GET(self) -> str:
        session = web.ctx.session
        if web.input().get("set"):
            session.user_id = int(web.input()["set"])
        if web.input().get("link"):
            session.wsgi_session.user_id = web.input()["link"]
        if web.input().get("drop"):
            del session.user_id
        return f"{session.get('user_id')}|{'user_id' in session}|{session.wsgi_session.user_id}"


def test_user_id_is_a_key_as_in_webpy_and_the_link_is_the_wsgi_sessions() -> None:
    # It was the user link: an int raised TypeError, and a string was no key.
    app = web.application(("/uid", "_UserId"), globals(), autoreload=False)
    session = WebpySession(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    client = Client(app.wsgifunc())
    assert client.get("/uid?set=42").get_data(as_text=True) == "42|True|None"
    assert client.get("/uid?link=ann").get_data(as_text=True) == "42|True|ann"
    assert len(session.middleware.user_sessions("ann")) == 1
    assert client.get("/uid?drop=1").get_data(as_text=True) == "None|False|ann"


def _fill_with_the_mapping_api() -> None:
    """A web.py-style initializer using more of the session than get and set."""
    session = web.ctx.session
    session.visits = 0
    session["seen"] = [len(session), sorted(session.keys()), session.session_id]


def test_a_webpy_initializer_may_use_the_mapping_it_fills() -> None:
    # len(), keys(), items() and session_id reached the session being started, and the
    # error blamed the initializer style the docs recommend.
    app = web.application(_URLS, globals(), autoreload=False)
    WebpySession(
        app,
        secret_key=SECRET,
        store="memory://",
        cleanup_interval=0,
        initializer=_fill_with_the_mapping_api,
    )
    client = Client(app.wsgifunc())
    assert client.get("/seen").get_data(as_text=True) == "[1, ['visits'], None]"


def _fill_with_an_operation() -> None:
    web.ctx.session.count = 0
    web.ctx.session.wsgi_session["x"] = 1


def test_a_webpy_initializer_using_an_operation_is_told_what_it_may_use() -> None:
    # The error said to return a mapping, blaming the very style the docs recommend.
    class Touch:
        def GET(self) -> str:
            try:
                web.ctx.session.get("visits")
            except SessionError as exc:
                return str(exc)
            return "no error"

    app = web.application(("/touch", "Touch"), {"Touch": Touch}, autoreload=False)
    WebpySession(
        app,
        secret_key=SECRET,
        store="memory://",
        cleanup_interval=0,
        initializer=_fill_with_an_operation,
    )
    answer = Client(app.wsgifunc()).get("/touch").get_data(as_text=True)
    assert "set(), incr(), append(), remember and the rest wait for a handler" in answer


def test_options_may_be_a_config() -> None:
    # As for SessionMiddleware: Config.from_ini() and from_env() users built one.
    app = web.application(_URLS, globals(), autoreload=False)
    config = Config.from_options(
        secret_key=SECRET, store="memory://", cleanup_interval=0, initializer=_fill_n
    )
    WebpySession(app, config)
    client = Client(app.wsgifunc())
    assert client.get("/bump").get_data(as_text=True) == "1"
    assert client.get("/show").get_data(as_text=True) == "1|True|2|False"
    with pytest.raises(ConfigError, match="either as a Config or as keyword arguments"):
        WebpySession(web.application(_URLS, globals(), autoreload=False), config, timeout=5)


def _fill_n() -> None:
    """A web.py-style initializer: it fills the new session itself."""
    web.ctx.session.n = 0


def test_send_cookie_takes_only_a_bool() -> None:
    class Bad:
        def GET(self) -> str:
            with pytest.raises(TypeError, match="send_cookie must be True or False"):
                web.ctx.session.send_cookie = 0
            return "ok"

    app = web.application(("/bad", "Bad"), {"Bad": Bad}, autoreload=False)
    WebpySession(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    assert Client(app.wsgifunc()).get("/bad").get_data(as_text=True) == "ok"


def test_ip_is_the_clients_address() -> None:
    app, _ = _app()
    response = Client(app.wsgifunc()).get("/ip", environ_base={"REMOTE_ADDR": "192.0.2.8"})
    assert response.get_data(as_text=True) == "192.0.2.8"


def test_calling_expired_ends_the_session_with_webpys_message() -> None:
    app, session = _app(initializer={"n": 0})
    client = Client(app.wsgifunc())
    client.get("/bump")
    web.config.session_parameters["expired_message"] = "Please log in again"
    response = client.get("/expire")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "Please log in again"
    assert client.get_cookie("session_id") is None
    assert session.middleware.store.count() == 0


def test_a_webpy_initializer_that_fills_the_session_works() -> None:
    holder: dict[str, WebpySession] = {}

    def initializer() -> None:
        holder["session"].n = 10
        holder["session"]["tags"] = ["new"]

    app, session = _app(initializer=initializer)
    holder["session"] = session
    client = Client(app.wsgifunc())
    assert client.get("/bump").get_data(as_text=True) == "11"
    assert client.get("/bump").get_data(as_text=True) == "12"


def test_an_initializer_returning_something_else_says_what_to_return() -> None:
    class Touch:
        def GET(self) -> str:
            try:
                web.ctx.session.n  # noqa: B018
            except TypeError as exc:
                return str(exc)
            return "no error"

    app = web.application(("/touch", "Touch"), {"Touch": Touch}, autoreload=False)
    WebpySession(app, secret_key=SECRET, store="memory://", initializer=lambda: 5)
    answer = Client(app.wsgifunc()).get("/touch").get_data(as_text=True)
    assert answer == (
        "initializer returned 'int': return a mapping of the new session's items, or fill "
        "the session and return None (web.py's way)"
    )


def test_wsgifunc_and_so_run_serve_through_the_middleware() -> None:
    app, session = _app()
    assert isinstance(session.middleware, SessionMiddleware)
    assert app.wsgifunc() is session.middleware


def test_app_request_serves_through_the_middleware() -> None:
    """web.py's own test helper hands out a start_response of two arguments."""
    app, _ = _app(initializer={"n": 0})
    response = app.request("/bump")
    assert response.data == b"1" and "session_id=" in response.headers["Set-Cookie"]


def test_extra_wsgi_middleware_wraps_the_session_middleware() -> None:
    app, session = _app()
    seen: list[Any] = []

    def outer(wsgi: Any) -> Any:
        seen.append(wsgi)
        return wsgi

    assert app.wsgifunc(outer) is session.middleware
    assert seen == [session.middleware]


def test_a_second_session_on_one_app_is_refused() -> None:
    app, _ = _app()
    with pytest.raises(SessionError, match="already"):
        WebpySession(app, secret_key=SECRET, store="memory://", cleanup_interval=0)


def test_outside_a_request_the_error_says_so() -> None:
    _, session = _app()
    web.ctx.clear()
    with pytest.raises(SessionError, match="no web.py request"):
        session.n  # noqa: B018
    assert repr(session) == "<WebpySession>"


def test_example_runs_as_the_readme_says(tmp_path: Path) -> None:
    """``python examples/webpy_app.py`` serves the demo on the default file store."""
    with run_example("webpy_app", tmp_path) as running:
        check_example_counts(running)
