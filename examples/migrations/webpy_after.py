"""After: the app of ``webpy_before.py`` on wsgisession.

A visit counter, a login and a logout. Run it with
``python examples/migrations/webpy_after.py`` and open http://127.0.0.1:8080/.
"""

from __future__ import annotations

import html
import os
import secrets
import sys
from typing import Any

import web

from wsgisession.webpy import WebpySession

urls = ("/", "index", "/login", "login", "/logout", "logout")

#: The session of the request being handled, once create_app() made it.
session: Any = None


class index:
    def GET(self) -> str:
        session.count += 1
        return page(session.count, session.get("user"))


class login:
    def POST(self) -> None:
        session.regenerate()  # against session fixation; web.session had no way
        session.user = web.input(username="").username
        session.wsgi_session.user_id = session.user or None  # lists and ends a user's sessions
        raise web.seeother("/")


class logout:
    def POST(self) -> None:
        session.kill()
        raise web.seeother("/")


def create_app(**options: Any) -> web.application:
    """The app; *options* are the middleware's."""
    global session
    app = web.application(urls, globals())
    options.setdefault("secret_key", os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32))
    options.setdefault("store", "file:./sessions")
    session = WebpySession(app, initializer={"count": 0}, **options)
    return app


def page(count: int, user: str | None) -> str:
    """The home page: the visit count, who is signed in, and the two forms."""
    who = f'<span id="user">{html.escape(user)}</span>' if user else "nobody"
    return (
        f'<!doctype html><p>Visits: <span id="count">{count}</span></p><p>Signed in: {who}</p>'
        '<form method="post" action="/login"><input name="username"><button>Log in</button>'
        '</form><form method="post" action="/logout"><button>Log out</button></form>'
    )


if __name__ == "__main__":
    # web.py's run() takes the address from the command line; default to loopback.
    if len(sys.argv) < 2:
        sys.argv.append(f"127.0.0.1:{os.environ.get('PORT', '8080')}")
    create_app().run()
