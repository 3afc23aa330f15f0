"""Before: a plain WSGI app on Beaker's sessions (the "after" is ``beaker_after.py``).

A visit counter, a login that takes a new session id, and a logout. Run it with
``python examples/migrations/beaker_before.py`` and open http://127.0.0.1:8000/.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from beaker.middleware import SessionMiddleware

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    session = environ["beaker.session"]
    route = (environ["REQUEST_METHOD"], environ["PATH_INFO"])
    if route == ("POST", "/login"):
        session.regenerate_id()  # against session fixation
        session["user"] = form(environ).get("username", "")
        session.save()
        return redirect(start_response)
    if route == ("POST", "/logout"):
        session.delete()
        return redirect(start_response)
    session["count"] = session.get("count", 0) + 1
    session.save()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [page(session["count"], session.get("user")).encode()]


def create_app(directory: str = "./sessions") -> WSGIApplication:
    """The app in Beaker's middleware, sessions in files under *directory*."""
    options: dict[str, Any] = {
        "session.type": "file",
        "session.data_dir": f"{directory}/data",
        "session.lock_dir": f"{directory}/lock",
        "session.timeout": 3600,
        "session.secret": os.environ.get("SECRET_KEY", "dev-only-change-me"),
        "session.httponly": True,
    }
    wrapped: WSGIApplication = SessionMiddleware(app, options)
    return wrapped


def form(environ: WSGIEnvironment) -> dict[str, str]:
    """The fields of a posted form."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    return {name: values[0] for name, values in parse_qs(body.decode()).items()}


def redirect(start_response: StartResponse) -> list[bytes]:
    start_response("303 See Other", [("Location", "/")])
    return []


def page(count: int, user: str | None) -> str:
    """The home page: the visit count, who is signed in, and the two forms."""
    who = f'<span id="user">{html.escape(user)}</span>' if user else "nobody"
    return (
        f'<!doctype html><p>Visits: <span id="count">{count}</span></p><p>Signed in: {who}</p>'
        '<form method="post" action="/login"><input name="username"><button>Log in</button>'
        '</form><form method="post" action="/logout"><button>Log out</button></form>'
    )


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    make_server("127.0.0.1", int(os.environ.get("PORT", "8000")), create_app()).serve_forever()
