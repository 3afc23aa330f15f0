"""A Bottle app on wsgisession: a counter, a login with "remember me", a flash, a logout.

Run it with ``python examples/bottle_app.py`` and open http://127.0.0.1:8080/.
Sessions go to ``./sessions`` (the default file store).
"""

from __future__ import annotations

import html
import os
import secrets
from typing import Any

import bottle

from wsgisession import Session, SessionMiddleware, get_session

FLASH_SECONDS = int(os.environ.get("FLASH_SECONDS", "5"))


def session() -> Session:
    """The current request's session."""
    return get_session(bottle.request.environ)


def create_app(**options: Any) -> SessionMiddleware:
    """Build the demo as a WSGI app; *options* go to :class:`SessionMiddleware`."""
    app = bottle.Bottle()

    @app.get("/")
    def index() -> str:
        s = session()
        s["count"] = s.get("count", 0) + 1
        parts = ["<!doctype html><title>wsgisession demo</title><h1>wsgisession + Bottle</h1>"]
        if "flash" in s:
            parts.append(f'<p id="flash"><b>{html.escape(s["flash"])}</b></p>')
        parts.append(f'<p>Visits: <span id="count">{s["count"]}</span></p>')
        if "user" in s:
            parts.append(
                f'<p>Signed in as <span id="user">{html.escape(s["user"])}</span>'
                f"{' (remembered)' if s.remember else ''}.</p>"
                '<form method="post" action="/logout"><button id="logout">Log out</button></form>'
            )
        else:
            parts.append(
                '<form method="post" action="/login"><input name="username" required>'
                '<label><input type="checkbox" name="remember"> Remember me</label>'
                "<button>Log in</button></form>"
            )
        return "".join(parts)

    @app.post("/login")
    def login() -> None:
        s = session()
        s.regenerate()
        s["user"] = bottle.request.forms.get("username", "")
        s.user_id = s["user"] or None  # an empty name is no user
        s.remember = bottle.request.forms.get("remember") == "on"
        s.set("flash", f"Welcome, {s['user']}!", timeout=FLASH_SECONDS)
        bottle.redirect("/")

    @app.post("/logout")
    def logout() -> None:
        session().invalidate()
        bottle.redirect("/")

    # Without SECRET_KEY a random key is used: fine for a demo, but sessions then end on
    # restart and differ between worker processes. Make one with secrets.token_urlsafe(32).
    options.setdefault("secret_key", os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32))
    options.setdefault("store", os.environ.get("SESSION_STORE", "file:./sessions"))
    return SessionMiddleware(app, **options)


if __name__ == "__main__":
    bottle.run(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
