"""A Flask app on wsgisession: a counter, a login with "remember me", a flash, a logout.

Run it with ``python examples/flask_app.py`` and open http://127.0.0.1:5000/.
Sessions go to ``./sessions`` (the default file store). Set ``SECRET_KEY`` and
``SESSION_STORE`` (a store URL) in the environment to change either.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, redirect, render_template_string, request, url_for

from wsgisession import Session, SessionMiddleware, get_session

PAGE = """<!doctype html>
<title>wsgisession demo</title>
<h1>wsgisession + Flask</h1>
{% if flash %}<p id="flash"><b>{{ flash }}</b></p>{% endif %}
<p>You have visited this page <span id="count">{{ count }}</span> time(s).</p>
{% if user %}
  <p>Signed in as <span id="user">{{ user }}</span>
     {% if remembered %}(remembered){% endif %}.</p>
  <form method="post" action="{{ url_for('logout') }}"><button id="logout">Log out</button></form>
{% else %}
  <form method="post" action="{{ url_for('login') }}">
    <input name="username" id="username" placeholder="name" required>
    <label><input type="checkbox" name="remember" id="remember"> Remember me</label>
    <button id="login">Log in</button>
  </form>
{% endif %}
"""

#: Seconds the "signed in" message stays, as a per-key timeout.
FLASH_SECONDS = int(os.environ.get("FLASH_SECONDS", "5"))


def session() -> Session:
    """The current request's session."""
    return get_session(request.environ)


def create_app(**options: Any) -> Flask:
    """Build the demo; *options* go to :class:`SessionMiddleware`."""
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        s = session()
        s["count"] = s.get("count", 0) + 1
        return render_template_string(
            PAGE,
            count=s["count"],
            user=s.get("user"),
            remembered=s.remember,
            flash=s.get("flash"),
        )

    @app.post("/login")
    def login() -> Any:
        s = session()
        s.regenerate()  # a new id on login defeats session fixation
        s["user"] = request.form["username"]
        s.user_id = request.form["username"]
        s.remember = request.form.get("remember") == "on"
        s.set("flash", f"Welcome, {s['user']}!", timeout=FLASH_SECONDS)
        return redirect(url_for("index"))

    @app.post("/logout")
    def logout() -> Any:
        session().invalidate()
        return redirect(url_for("index"))

    options.setdefault("secret_key", os.environ.get("SECRET_KEY", "dev-only-change-me"))
    options.setdefault("store", os.environ.get("SESSION_STORE", "file:./sessions"))
    app.wsgi_app = SessionMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
