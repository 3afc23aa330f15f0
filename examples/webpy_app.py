"""A web.py app on wsgisession: the classic counter, a login with "remember me", a flash.

Run it with ``python examples/webpy_app.py`` and open http://127.0.0.1:8080/ (or
``/count`` and ``/reset``, web.py's sessions cookbook). Sessions go to ``./sessions``
(the default file store). Set ``SECRET_KEY`` and ``SESSION_STORE`` (a store URL) in
the environment to change either.

It runs with web.py's debug mode and its reloader on, which web.py's own sessions
can't do without the ``web.config._session`` trick. Handlers reach the session at
``web.ctx.session``, where :class:`WebpySession` puts it.
"""

from __future__ import annotations

import html
import os
import secrets
import sys
from typing import Any

import web

from wsgisession.webpy import WebpySession

#: Seconds the "signed in" message stays, as a per-key timeout.
FLASH_SECONDS = int(os.environ.get("FLASH_SECONDS", "5"))

urls = (
    "/", "index",
    "/login", "login",
    "/logout", "logout",
    "/count", "count",
    "/reset", "reset",
)  # fmt: skip


class index:
    def GET(self) -> str:
        session = web.ctx.session
        session.count += 1
        parts = ["<!doctype html><title>wsgisession demo</title><h1>wsgisession + web.py</h1>"]
        if "flash" in session:
            parts.append(f'<p id="flash"><b>{html.escape(session.flash)}</b></p>')
        parts.append(f'<p>Visits: <span id="count">{session.count}</span></p>')
        if "user" in session:
            parts.append(
                f'<p>Signed in as <span id="user">{html.escape(session.user)}</span>'
                f"{' (remembered)' if session.remember else ''}.</p>"
                '<form method="post" action="/logout"><button id="logout">Log out</button></form>'
            )
        else:
            parts.append(
                '<form method="post" action="/login"><input name="username" required>'
                '<label><input type="checkbox" name="remember"> Remember me</label>'
                "<button>Log in</button></form>"
            )
        web.header("Content-Type", "text/html; charset=utf-8")
        return "".join(parts)


class login:
    def POST(self) -> None:
        session = web.ctx.session
        form = web.input(username="", remember=None)
        session.regenerate()  # a new id on login defeats session fixation
        session.user = form.username
        session.wsgi_session.user_id = form.username or None  # an empty name is no user
        session.remember = form.remember == "on"
        session.set("flash", f"Welcome, {form.username}!", timeout=FLASH_SECONDS)
        raise web.seeother("/")


class logout:
    def POST(self) -> None:
        web.ctx.session.kill()
        raise web.seeother("/")


class count:
    def GET(self) -> str:
        web.ctx.session.count += 1
        return str(web.ctx.session.count)


class reset:
    def GET(self) -> str:
        web.ctx.session.kill()
        return ""


def create_app(**options: Any) -> Any:
    """Build the demo's ``web.application``; *options* go to :class:`SessionMiddleware`.

    Serve ``create_app().wsgifunc()`` with any WSGI server, or call ``.run()``.
    """
    app = web.application(urls, globals())
    # Without SECRET_KEY a random key is used: fine for a demo, but sessions then end on
    # restart and differ between worker processes. Make one with secrets.token_urlsafe(32).
    options.setdefault("secret_key", os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32))
    options.setdefault("store", os.environ.get("SESSION_STORE", "file:./sessions"))
    options.setdefault("initializer", {"count": 0})
    WebpySession(app, **options)
    return app


if __name__ == "__main__":
    # web.py's run() takes the address from the command line; default to loopback.
    if len(sys.argv) < 2:
        sys.argv.append(f"127.0.0.1:{os.environ.get('PORT', '8080')}")
    create_app().run()
