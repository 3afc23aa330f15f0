"""After: the app of ``flask_session_before.py`` on wsgisession.

A visit counter, a login that takes a new session id, and a logout. Run it with
``python examples/migrations/flask_session_after.py`` and open http://127.0.0.1:5000/.
"""

from __future__ import annotations

import html
import os
import secrets
from typing import Any

from flask import Flask, redirect, request
from flask.typing import ResponseReturnValue

from wsgisession.flask import current_session, init_app


def create_app(**options: Any) -> Flask:
    """The app; *options* are the middleware's."""
    app = Flask(__name__)
    options.setdefault("secret_key", os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32))
    options.setdefault("store", "file:./sessions")
    options.setdefault("timeout", 3600)  # PERMANENT_SESSION_LIFETIME; not remembered
    init_app(app, **options)

    @app.get("/")
    def index() -> ResponseReturnValue:
        session = current_session()
        session["count"] = session.get("count", 0) + 1
        return page(session["count"], session.get("user"))

    @app.post("/login")
    def login() -> ResponseReturnValue:
        session = current_session()
        session.regenerate()  # against session fixation
        session["user"] = request.form.get("username", "")
        session.user_id = session["user"] or None  # lists and ends a user's sessions
        return redirect("/", 303)

    @app.post("/logout")
    def logout() -> ResponseReturnValue:
        current_session().invalidate()
        return redirect("/", 303)

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
    create_app().run(port=int(os.environ.get("PORT", "5000")))
