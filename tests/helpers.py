"""A tiny routed WSGI app, a test client around the middleware, and child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from werkzeug.middleware.lint import LintMiddleware
from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Request, Response

import wsgisession
from wsgisession import Session, SessionMiddleware
from wsgisession.stores import Store

Handler = Callable[[Session, Request], Any]

SECRET = "test-secret-key-that-is-long-enough"


def routed_app(routes: dict[str, Handler]) -> Callable[..., Iterable[bytes]]:
    """A WSGI app calling ``routes[path](session, request)``.

    A handler may return a Response, or anything JSON-encodable, which becomes the
    body of a 200 response.
    """

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        result = routes[request.path](environ["session"], request)
        if not isinstance(result, Response):
            result = Response(json.dumps(result, default=str), mimetype="application/json")
        return result(environ, start_response)

    return app


def counter(session: Session, request: Request) -> int:
    """Add one to ``session["n"]`` and return it."""
    session["n"] = session.get("n", 0) + 1
    n: int = session["n"]
    return n


def dump(session: Session, request: Request) -> dict[str, Any]:
    """Return the session's data."""
    return dict(session)


def make_client(routes: dict[str, Handler], **options: Any) -> tuple[Client, SessionMiddleware]:
    """A werkzeug test client for the routes wrapped in the middleware (and the linter)."""
    options.setdefault("secret_key", SECRET)
    options.setdefault("store", "memory://")
    # No purge threads outliving the test; test_purge covers them.
    options.setdefault("cleanup_interval", 0)
    middleware = SessionMiddleware(routed_app(routes), **options)
    return Client(LintMiddleware(middleware)), middleware


def get_with_cookie_header(
    application: Any, path: str, cookie_header: str, **kwargs: Any
) -> TestResponse:
    """GET *path* sending *cookie_header* verbatim (the client's cookie jar is off)."""
    client = Client(application, use_cookies=False)
    return client.get(path, headers={"Cookie": cookie_header}, **kwargs)


def holds_no_session(store: Store, key: str) -> bool:
    """Whether *key* holds nothing, or only the tombstone a regenerate left there."""
    record = store.load(key)
    return record is None or record.version == 0


def set_cookies(response: TestResponse) -> list[str]:
    """The Set-Cookie headers of *response*."""
    return response.headers.getlist("Set-Cookie")


def body(response: TestResponse) -> Any:
    """The JSON body of *response*."""
    return json.loads(response.get_data(as_text=True))


def cookie_value(client: Client, name: str = "session_id") -> str:
    """The value of the cookie *name* that *client* holds."""
    cookie = client.get_cookie(name)
    assert cookie is not None
    return cookie.value


def twin(client: Client, name: str = "session_id") -> Client:
    """A second browser on *client*'s application, holding the same session cookie."""
    other = Client(client.application)
    other.set_cookie(name, cookie_value(client, name))
    return other


_SRC = str(Path(wsgisession.__file__).resolve().parents[1])
#: The environment of a child Python: it imports this checkout's wsgisession.
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [_SRC, os.environ.get("PYTHONPATH")])),
}


def python_child(code: str, *args: object) -> subprocess.Popen[str]:
    """Start ``python -c code args…`` with pipes for its text output."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )
