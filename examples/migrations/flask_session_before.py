"""Before: a Flask app on Flask-Session (the "after" is ``flask_session_after.py``).

A visit counter, a login that takes a new session id, and a logout. Run it with
``python examples/migrations/flask_session_before.py`` and open http://127.0.0.1:5000/.
"""

from __future__ import annotations

import html
import os
from datetime import timedelta

from cachelib import FileSystemCache
from flask import Flask, redirect, request, session
from flask.typing import ResponseReturnValue
from flask_session import Session


def create_app(directory: str = "./sessions") -> Flask:
    """The app, its sessions in files under *directory*."""
    app = Flask(__name__)
    app.config.update(
        SESSION_TYPE="cachelib",
        SESSION_CACHELIB=FileSystemCache(directory),
        SESSION_PERMANENT=False,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=1),
    )
    Session(app)

    @app.get("/")
    def index() -> ResponseReturnValue:
        session["count"] = session.get("count", 0) + 1
        return page(session["count"], session.get("user"))

    @app.post("/login")
    def login() -> ResponseReturnValue:
        app.session_interface.regenerate(session)  # against session fixation
        session["user"] = request.form.get("username", "")
        return redirect("/", 303)

    @app.post("/logout")
    def logout() -> ResponseReturnValue:
        session.clear()
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
