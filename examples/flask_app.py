"""A Flask app on wsgisession: a counter, a login with "remember me", a flash, a logout,
and a "your sessions" page that ends a session on another device.

Run it with ``python examples/flask_app.py`` and open http://127.0.0.1:5000/.
Sessions go to ``./sessions`` (the default file store). Set ``SECRET_KEY`` and
``SESSION_STORE`` (a store URL) in the environment to change either.
"""

from __future__ import annotations

import os
import secrets
import time
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
  <p><a href="{{ url_for('sessions') }}" id="sessions">Your sessions</a></p>
  <form method="post" action="{{ url_for('logout') }}"><button id="logout">Log out</button></form>
{% else %}
  <form method="post" action="{{ url_for('login') }}">
    <input name="username" id="username" placeholder="name" required>
    <label><input type="checkbox" name="remember" id="remember"> Remember me</label>
    <button id="login">Log in</button>
  </form>
{% endif %}
"""

SESSIONS_PAGE = """<!doctype html>
<title>Your sessions</title>
<h1>Your sessions, {{ user }}</h1>
<table>
  <tr><th>started</th><th>last seen</th><th>device</th><th>address</th><th></th></tr>
  {% for info in infos %}
  <tr class="session" id="s-{{ info.handle[:12] }}">
    <td>{{ when(info.created_at) }}</td>
    <td>{{ when(info.last_seen) }}</td>
    <td>{{ info.user_agent or "?" }}{% if info.remembered %} (remembered){% endif %}</td>
    <td>{{ info.remote_addr or "?" }}</td>
    <td>
      {% if info.handle == current %}<b class="current">this device</b>{% else %}
      <form method="post" action="{{ url_for('end_session') }}">
        <input type="hidden" name="handle" value="{{ info.handle }}">
        <button class="end">End</button>
      </form>{% endif %}
    </td>
  </tr>
  {% endfor %}
</table>
<form method="post" action="{{ url_for('end_others') }}">
  <button id="end-others">Log out all other devices</button>
</form>
<p><a href="{{ url_for('index') }}">Back</a></p>
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
        s.user_id = request.form["username"] or None  # an empty name is no user
        s.remember = request.form.get("remember") == "on"
        s.set("flash", f"Welcome, {s['user']}!", timeout=FLASH_SECONDS)
        return redirect(url_for("index"))

    @app.post("/logout")
    def logout() -> Any:
        session().invalidate()
        return redirect(url_for("index"))

    @app.get("/sessions")
    def sessions() -> Any:
        s = session()
        if s.user_id is None:
            return redirect(url_for("index"))
        return render_template_string(
            SESSIONS_PAGE,
            user=s.user_id,
            infos=middleware.user_sessions(s.user_id),
            current=s.handle,
            when=lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)),
        )

    @app.post("/sessions/end")
    def end_session() -> Any:
        s = session()
        handle = request.form.get("handle", "")
        # Only a handle from this user's own list may be ended.
        if s.user_id is not None and any(
            info.handle == handle for info in middleware.user_sessions(s.user_id)
        ):
            middleware.end_session(handle)
        return redirect(url_for("sessions"))

    @app.post("/sessions/end-others")
    def end_others() -> Any:
        s = session()
        if s.user_id is not None:
            middleware.end_user_sessions(s.user_id, keep=s)
        return redirect(url_for("sessions"))

    # Without SECRET_KEY a random key is used: fine for a demo, but sessions then end on
    # restart and differ between worker processes. Make one with secrets.token_urlsafe(32).
    options.setdefault("secret_key", os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32))
    options.setdefault("store", os.environ.get("SESSION_STORE", "file:./sessions"))
    options.setdefault("track_clients", True)
    middleware = SessionMiddleware(app.wsgi_app, **options)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
