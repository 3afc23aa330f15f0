"""A save that fails after the application returned: ``on_save_error`` answers.

The behaviour is in docs/behaviour.rst, section "Errors". The store is a private
``redis-server`` that the handler stops after it has read the session, so the save
that follows fails for real; the shared servers are never stopped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from tests.helpers import SECRET, SERVER
from tests.redis_servers import RedisServer
from wsgisession import ConfigError, SessionMiddleware, StoreError, get_session
from wsgisession.config import Config

pytestmark = SERVER

seen: list[tuple[str, str]] = []


def sorry_page(environ: dict[str, Any], error: StoreError) -> Any:
    """The app's own error page: a 503 that says the session could not be saved."""
    seen.append((environ["PATH_INFO"], type(error).__name__))
    return Response("sorry, try again", status=503)


def _app(server: RedisServer) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        session = get_session(environ)
        session["n"] = session.get("n", 0) + 1
        if Request(environ).args.get("stop"):
            server.stop()
        return Response(str(session["n"]))(environ, start_response)

    return app


def _streaming(server: RedisServer) -> Any:
    """An app whose start_response is called in its body's first step."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        session = get_session(environ)
        session["n"] = 1
        server.stop()
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"streamed"

    return app


def test_a_failed_save_answers_with_the_apps_page(private_redis: RedisServer) -> None:
    seen.clear()
    middleware = SessionMiddleware(
        _app(private_redis), secret_key=SECRET, store=private_redis.url, on_save_error=sorry_page
    )
    client = Client(middleware)
    assert client.get("/").get_data(as_text=True) == "1"
    response = client.get("/count?stop=1")
    assert response.status_code == 503
    assert response.get_data(as_text=True) == "sorry, try again"
    assert "Set-Cookie" not in response.headers
    assert response.headers["Vary"] == "Cookie"  # the page may show the session
    assert seen == [("/count", "StoreError")]
    private_redis.start()
    assert client.get("/").get_data(as_text=True) == "2"  # the failed request saved nothing


def test_a_failed_save_in_a_streaming_body_answers_too(private_redis: RedisServer) -> None:
    seen.clear()
    middleware = SessionMiddleware(
        _streaming(private_redis),
        secret_key=SECRET,
        store=private_redis.url,
        on_save_error=sorry_page,
    )
    response = Client(middleware).get("/stream")
    assert (response.status_code, response.get_data(as_text=True)) == (503, "sorry, try again")
    assert seen == [("/stream", "StoreError")]


def test_without_the_hook_the_error_reaches_the_server(private_redis: RedisServer) -> None:
    middleware = SessionMiddleware(_app(private_redis), secret_key=SECRET, store=private_redis.url)
    client = Client(middleware)
    client.get("/")
    with pytest.raises(StoreError):
        client.get("/?stop=1")


def test_the_hook_may_re_raise(private_redis: RedisServer) -> None:
    def reraise(environ: dict[str, Any], error: StoreError) -> Any:
        raise error

    middleware = SessionMiddleware(
        _app(private_redis), secret_key=SECRET, store=private_redis.url, on_save_error=reraise
    )
    client = Client(middleware)
    client.get("/")
    with pytest.raises(StoreError):
        client.get("/?stop=1")


def test_on_save_error_must_be_callable_and_is_named_in_ini(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="option 'on_save_error' must be a callable or None"):
        Config.from_options(secret_key=SECRET, on_save_error="page")
    path = tmp_path / "app.ini"
    path.write_text(f"[session]\nsecret_key = {SECRET}\non_save_error = {__name__}:sorry_page\n")
    assert Config.from_ini(path).on_save_error is sorry_page
