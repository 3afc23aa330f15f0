"""Django: ``request.session`` through ``wsgisession.django``, ``django.contrib.sessions`` absent.

The one-file example project runs under real servers twice: served by
``wsgisession.django.get_wsgi_application()`` (the session wraps the application) and
by Django's own WSGI application (the middleware alone runs the session). Its flows
then run through ``django.test.Client``, which calls Django's handler directly, as a
project's own tests do. Then what each way of running does with headers, streaming
bodies and errors, and the settings refused at startup. Django's session API is
``test_django_session.py``.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable, Iterator
from http.cookies import Morsel
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessions
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.test import Client
from werkzeug.test import Client as WsgiClient
from werkzeug.wrappers import Response as WerkzeugResponse

import wsgisession.django
from tests.frameworks.django_env import (
    OURS,
    REMEMBER,
    ask,
    django_settings,
    project,
    session_options,
    visit,
)
from tests.frameworks.flows import ExampleFlows, log_in
from tests.frameworks.servers import (
    EXAMPLES,
    SECRET,
    Browser,
    Server,
    check_example_counts,
    run_example,
)
from tests.helpers import FakeClock
from wsgisession import ConfigError, SessionError, SessionMiddleware
from wsgisession.config import Config
from wsgisession.django import DjangoSessionMiddleware

# -- the example under real servers ----------------------------------------------------


class TestDjangoExample(ExampleFlows):
    """The Django example's flows over waitress and gunicorn, the session wrapping Django."""

    example = "django_app"

    def test_only_the_wsgisession_cookie_is_set(self, server: Server) -> None:
        """Django's own session app is not installed: no ``sessionid`` cookie appears."""
        browser = Browser(server.url)
        browser.get("/")
        log_in(browser, "eve", remember=True)
        browser.post("/logout")
        browser.get("/")
        assert set(browser.cookies) == {"session_id"}


class TestDjangoExampleMiddlewareAlone(ExampleFlows):
    """The same flows with Django's own WSGI application: the middleware runs the session."""

    example = "django_app"
    options = {"wrap": False}


def test_example_runs_as_the_readme_says(tmp_path: Path) -> None:
    """``python examples/django_app.py`` serves the demo on the default file store."""
    with run_example("django_app", tmp_path) as running:
        check_example_counts(running)


# -- the example through Django's test client ------------------------------------------


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_django_app", EXAMPLES / "django_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_flows_through_djangos_test_client(tmp_path: Path, clock: FakeClock) -> None:
    example = _load_example()
    options = example.session_options(**session_options(tmp_path))
    with django_settings(**{**example.SETTINGS, "ROOT_URLCONF": example}, WSGISESSION=options):
        client = Client()
        assert 'id="count">1<' in client.get("/").content.decode()
        assert 'id="count">2<' in client.get("/").content.decode()
        before = client.cookies["session_id"].value

        client.post("/login", {"username": "ann"})
        after = client.cookies["session_id"]
        assert after.value != before, "cycle_key() did not give a new id"
        assert after["max-age"] == "", "not remembered: a browser-lifetime cookie"
        page = client.get("/").content.decode()
        assert 'id="user">ann<' in page and "Welcome, ann!" in page and 'id="count">3<' in page
        assert len(wsgisession.django.session_middleware().user_sessions("ann")) == 1

        clock.advance(example.FLASH_SECONDS + 1)
        page = client.get("/").content.decode()
        assert "Welcome" not in page and 'id="user">ann<' in page

        client.post("/logout")
        assert client.cookies["session_id"]["max-age"] == "0"
        page = client.get("/").content.decode()
        assert 'id="count">1<' in page and 'id="user"' not in page
        assert wsgisession.django.session_middleware().user_sessions("ann") == []
        assert set(client.cookies) == {"session_id"}


def test_example_remember_me_through_djangos_test_client(tmp_path: Path) -> None:
    example = _load_example()
    options = example.session_options(**session_options(tmp_path))
    with django_settings(**{**example.SETTINGS, "ROOT_URLCONF": example}, WSGISESSION=options):
        client = Client()
        client.post("/login", {"username": "bob", "remember": "on"})
        assert int(client.cookies["session_id"]["max-age"]) == REMEMBER
        assert "(remembered)" in client.get("/").content.decode()


# -- the middleware alone and the wrapped application ----------------------------------


@pytest.fixture
def options(tmp_path: Path) -> dict[str, Any]:
    """The ``WSGISESSION`` setting of the project."""
    return session_options(tmp_path)


@pytest.fixture
def client(options: dict[str, Any]) -> Iterator[Client]:
    """Django's test client on a project whose one view the test passes."""
    with project(options):
        yield Client()


def test_alone_the_session_is_saved_before_a_streaming_body(client: Client) -> None:
    def stream(request: HttpRequest) -> StreamingHttpResponse:
        def body() -> Iterator[bytes]:
            yield b"one"
            request.session["late"] = True
            yield b"two"

        request.session["early"] = True
        return StreamingHttpResponse(body())

    response = visit(client, stream)
    with pytest.raises(SessionError, match="the response is finished"):
        b"".join(response.streaming_content)
    assert ask(client, lambda s: (s.get("early"), s.get("late"))) == (True, None)


def test_wrapped_a_change_while_streaming_is_saved(options: dict[str, Any]) -> None:
    with project(options):
        application = wsgisession.django.get_wsgi_application()
        assert application is wsgisession.django.session_middleware()
        browser = WsgiClient(application)

        def stream(request: HttpRequest) -> StreamingHttpResponse:
            def body() -> Iterator[bytes]:
                yield b"one"
                request.session["late"] = True

            request.session["early"] = True
            return StreamingHttpResponse(body())

        # Buffered, the client closes the body as a server does, which is when it saves.
        response = browser.get("/run", environ_overrides={"test.view": stream}, buffered=True)
        assert response.get_data() == b"one"
        seen: list[Any] = []

        def look(request: HttpRequest) -> HttpResponse:
            session = request.session
            seen.append((session.get("early"), session.get("late")))
            return HttpResponse()

        browser.get("/run", environ_overrides={"test.view": look})
        assert seen == [(True, True)]


def test_a_session_middleware_around_django_runs_the_session(options: dict[str, Any]) -> None:
    """Wrapped in wsgi.py by hand, the wrapper's session is ``request.session``."""
    with project(options):
        outer = SessionMiddleware(WSGIHandler(), {**options, "cookie_name": "outer"})
        browser = WsgiClient(outer)

        def write(request: HttpRequest) -> HttpResponse:
            session = request.session
            session["a"] = 1
            assert session.wsgi_session is request.META["session"]
            return HttpResponse()

        response = browser.get("/run", environ_overrides={"test.view": write})
        assert response.status_code == 200
        assert [c.split("=")[0] for c in response.headers.getlist("Set-Cookie")] == ["outer"]


def test_responses_keep_their_headers_and_vary_on_cookie(client: Client) -> None:
    def answer(request: HttpRequest) -> HttpResponse:
        request.session["a"] = 1
        response = HttpResponse("body", status=201, headers={"Vary": "Accept"})
        response.set_cookie("theme", "dark")
        return response

    response = visit(client, answer)
    assert response.status_code == 201 and response.content == b"body"
    assert response["Vary"] == "Accept, Cookie"
    assert response["Cache-Control"] == 'no-cache="Set-Cookie"'
    assert set(response.cookies) == {"theme", "session_id"}
    assert response.cookies["session_id"]["httponly"] is True
    assert response.cookies["session_id"]["samesite"] == "Lax"


def test_an_untouched_session_adds_nothing(client: Client) -> None:
    response = visit(client, lambda request: HttpResponse("plain"))
    assert not response.cookies and not response.has_header("Vary")


def test_a_server_error_saves_nothing(client: Client) -> None:
    def fail(request: HttpRequest) -> HttpResponse:
        request.session["a"] = 1
        return HttpResponse(status=503)

    assert visit(client, fail).status_code == 503
    assert not client.cookies


def _store_down(environ: dict[str, Any], error: Exception) -> Any:
    return WerkzeugResponse(
        "Please try again in a moment.", status=503, headers={"Retry-After": "5"}
    )


def _add_breaking(directory: Path) -> Callable[[HttpRequest], HttpResponse]:
    """A view that changes the session, then leaves a file where its store's directory is."""

    def add(request: HttpRequest) -> HttpResponse:
        request.session["cart"] = ["book"]
        shutil.rmtree(directory, ignore_errors=True)
        directory.write_text("a file where the store's directory was")
        return HttpResponse("Added to your cart")

    return add


def test_alone_a_failed_save_answers_with_on_save_errors_page(tmp_path: Path) -> None:
    # The view's own response went out instead, with the page's Content-Length: "Added
    # to your cart" for a cart that was not saved, and a body shorter than it said.
    directory = tmp_path / "sessions"
    options = session_options(tmp_path, on_save_error=_store_down)

    with project(options):
        client = Client()
        response = visit(client, _add_breaking(directory))
    assert (response.status_code, response.content) == (503, b"Please try again in a moment.")
    assert response["Retry-After"] == "5" and response["Content-Length"] == "29"
    assert response["Vary"] == "Cookie" and not client.cookies


def test_alone_a_failed_save_without_a_page_goes_through_handler500(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"

    with project(session_options(tmp_path)):
        client = Client(raise_request_exception=False)
        response = visit(client, _add_breaking(directory))
    assert response.status_code == 500 and b"cart" not in response.content


def test_one_setting_one_store_for_every_client(options: dict[str, Any]) -> None:
    """Django builds middleware per test client; they share the middleware of the setting."""
    with django_settings(MIDDLEWARE=[OURS], WSGISESSION=options):
        first = DjangoSessionMiddleware(HttpResponse)
        second = DjangoSessionMiddleware(HttpResponse)
        assert first.wsgi_middleware is second.wsgi_middleware
        assert first.wsgi_middleware is wsgisession.django.session_middleware()
    with django_settings(MIDDLEWARE=[OURS], WSGISESSION=dict(options)):
        assert DjangoSessionMiddleware(HttpResponse).wsgi_middleware is not first.wsgi_middleware


def test_djangos_own_session_settings_left_set_are_flagged(options: dict[str, Any]) -> None:
    # Ignored without a word, SESSION_COOKIE_SECURE would leave the cookie not Secure.
    with (
        django_settings(MIDDLEWARE=[OURS], WSGISESSION=options, SESSION_COOKIE_SECURE=True),
        pytest.warns(UserWarning, match=r"SESSION_COOKIE_SECURE .* set 'cookie_secure'"),
    ):
        DjangoSessionMiddleware(HttpResponse)


def test_a_config_object_is_a_setting_too(tmp_path: Path) -> None:
    config = Config.from_options(session_options(tmp_path, timeout=60))
    with project(config):
        assert ask(Client(), lambda s: s.get_session_cookie_age()) == 60


def test_alone_a_partitioned_cookie_needs_python_314_or_the_wrapper(
    options: dict[str, Any],
) -> None:
    """Django sends cookies through ``http.cookies``, which has Partitioned from 3.14."""

    def write(request: HttpRequest) -> HttpResponse:
        request.session["a"] = 1
        return HttpResponse()

    setting = {**options, "cookie_partitioned": True, "cookie_samesite": "None"}
    with project(setting):
        if Morsel().isReservedKey("partitioned"):
            response = visit(Client(), write, secure=True)
            assert response.cookies["session_id"]["partitioned"] is True
        else:
            with pytest.raises(ImproperlyConfigured, match="get_wsgi_application"):
                visit(Client(), write, secure=True)
            assert wsgisession.django.session_middleware().store.count() == 0


# -- configuration errors ----------------------------------------------------------------


class CustomSessions(DjangoSessions):
    """A project's own subclass of Django's session middleware."""


@pytest.mark.parametrize(
    ("middleware", "message"),
    [
        pytest.param(
            ["django.contrib.sessions.middleware.SessionMiddleware", OURS],
            "remove Django's SessionMiddleware",
            id="djangos",
        ),
        pytest.param(
            [OURS, f"{__name__}.CustomSessions"],
            "both would set request.session",
            id="a-subclass-of-djangos",
        ),
        pytest.param(
            ["django.contrib.auth.middleware.AuthenticationMiddleware", OURS],
            "move DjangoSessionMiddleware above it",
            id="auth-first",
        ),
        pytest.param(
            ["django.contrib.messages.middleware.MessageMiddleware", OURS],
            "needs request.session",
            id="messages-first",
        ),
    ],
)
def test_a_middleware_setting_that_cant_work_is_refused(
    options: dict[str, Any], middleware: list[str], message: str
) -> None:
    with django_settings(MIDDLEWARE=middleware, WSGISESSION=options):
        with pytest.raises(ImproperlyConfigured, match=message):
            DjangoSessionMiddleware(HttpResponse)


@pytest.mark.parametrize(
    ("setting", "error", "message"),
    [
        pytest.param(None, ImproperlyConfigured, "needs the WSGISESSION setting", id="missing"),
        pytest.param("file:x", ImproperlyConfigured, "got str", id="not-a-mapping"),
        pytest.param(
            {"secret_key": SECRET, "timeout": "soon"},
            ConfigError,
            "^settings.WSGISESSION: option 'timeout'",
            id="bad-option",
        ),
        pytest.param({}, ConfigError, "'secret_key' is required", id="no-key"),
    ],
)
def test_a_bad_wsgisession_setting_is_refused_at_startup(
    setting: object, error: type[Exception], message: str
) -> None:
    with django_settings(MIDDLEWARE=[OURS], WSGISESSION=setting):
        with pytest.raises(error, match=message):
            DjangoSessionMiddleware(HttpResponse)


def test_get_wsgi_application_needs_the_middleware(options: dict[str, Any]) -> None:
    with project(options, MIDDLEWARE=[]):
        with pytest.raises(ImproperlyConfigured, match="add 'wsgisession.django"):
            wsgisession.django.get_wsgi_application()
