"""A Pyramid app on wsgisession: a counter, a login with "remember me", a flash, a logout.

Run it with ``python examples/pyramid_app.py`` and open http://127.0.0.1:6543/.
Sessions go to ``./sessions`` (the default file store). Set ``SECRET_KEY`` and
``SESSION_STORE`` (a store URL) in the environment to change either.

``config.include("wsgisession.pyramid")`` makes ``request.session`` the wsgisession
session, behind Pyramid's own session interface.
"""

from __future__ import annotations

import os
import secrets
from html import escape
from typing import Any

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.request import Request
from pyramid.response import Response

from wsgisession import SessionMiddleware

#: Seconds the "signed in" message stays, as a per-key timeout.
FLASH_SECONDS = int(os.environ.get("FLASH_SECONDS", "5"))


def index(request: Request) -> Response:
    s = request.session
    s["count"] = s.get("count", 0) + 1
    parts = ["<!doctype html><title>wsgisession demo</title><h1>wsgisession + Pyramid</h1>"]
    if "flash" in s:
        parts.append(f'<p id="flash"><b>{escape(s["flash"])}</b></p>')
    parts.append(f'<p>Visits: <span id="count">{s["count"]}</span></p>')
    if "user" in s:
        parts.append(
            f'<p>Signed in as <span id="user">{escape(s["user"])}</span>'
            f"{' (remembered)' if s.remember else ''}.</p>"
            '<form method="post" action="/logout"><button id="logout">Log out</button></form>'
        )
    else:
        parts.append(
            '<form method="post" action="/login"><input name="username" required>'
            '<label><input type="checkbox" name="remember"> Remember me</label>'
            "<button>Log in</button></form>"
        )
    return Response("".join(parts))


def login(request: Request) -> Response:
    s = request.session
    s.regenerate()  # a new id on login defeats session fixation
    s["user"] = request.POST.get("username", "")
    s.user_id = s["user"] or None  # an empty name is no user
    s.remember = request.POST.get("remember") == "on"
    s.set("flash", f"Welcome, {s['user']}!", timeout=FLASH_SECONDS)
    return HTTPSeeOther(location="/")


def logout(request: Request) -> Response:
    request.session.invalidate()
    return HTTPSeeOther(location="/")


def create_app(**options: Any) -> SessionMiddleware:
    """Build the demo as a WSGI app; *options* go to :class:`SessionMiddleware`."""
    with Configurator() as config:
        config.include("wsgisession.pyramid")
        config.add_route("index", "/")
        config.add_route("login", "/login")
        config.add_route("logout", "/logout")
        config.add_view(index, route_name="index", request_method="GET")
        config.add_view(login, route_name="login", request_method="POST")
        config.add_view(logout, route_name="logout", request_method="POST")
        wsgi_app = config.make_wsgi_app()
    # Without SECRET_KEY a random key is used: fine for a demo, but sessions then end on
    # restart and differ between worker processes. Make one with secrets.token_urlsafe(32).
    options.setdefault("secret_key", os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32))
    options.setdefault("store", os.environ.get("SESSION_STORE", "file:./sessions"))
    return SessionMiddleware(wsgi_app, **options)


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    port = int(os.environ.get("PORT", "6543"))
    print(f"Serving on http://127.0.0.1:{port}/")
    make_server("127.0.0.1", port, create_app()).serve_forever()
