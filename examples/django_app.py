"""A one-file Django project on wsgisession: a counter, a login with "remember me", a flash.

Run it with ``python examples/django_app.py`` and open http://127.0.0.1:8000/.
Sessions go to ``./sessions`` (the default file store). Set ``SECRET_KEY`` and
``SESSION_STORE`` (a store URL) in the environment to change either.

``django.contrib.sessions`` is not installed: ``wsgisession.django.DjangoSessionMiddleware``
takes its place in ``MIDDLEWARE``, so views use ``request.session`` with Django's names
(``cycle_key()``, ``flush()``) and wsgisession's (``set(..., timeout=)``, ``remember``,
``user_id``). The options are the ``WSGISESSION`` setting.
"""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING, Any

import django.core.wsgi
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path
from django.utils.html import escape
from django.views.decorators.http import require_GET, require_POST

import wsgisession.django

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

#: Seconds the "signed in" message stays, as a per-key timeout.
FLASH_SECONDS = int(os.environ.get("FLASH_SECONDS", "5"))

#: The project's settings but the session options, which ``create_app`` adds.
SETTINGS: dict[str, Any] = {
    "DEBUG": False,
    # Django signs its own things with it; the sessions have their own key.
    "SECRET_KEY": os.environ.get("SECRET_KEY", "dev-only-change-me"),
    "ALLOWED_HOSTS": ["127.0.0.1", "localhost", "testserver"],
    "ROOT_URLCONF": __name__,
    "INSTALLED_APPS": [],
    "MIDDLEWARE": [
        # Where django.contrib.sessions' SessionMiddleware would be.
        "wsgisession.django.DjangoSessionMiddleware",
        "django.middleware.common.CommonMiddleware",
    ],
    "USE_TZ": True,
}


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    s = request.session
    s["count"] = s.get("count", 0) + 1
    parts = ["<!doctype html><title>wsgisession demo</title><h1>wsgisession + Django</h1>"]
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
    return HttpResponse("".join(parts))


@require_POST
def login(request: HttpRequest) -> HttpResponse:
    s = request.session
    s.cycle_key()  # a new id on login defeats session fixation
    s["user"] = request.POST.get("username", "")
    s.user_id = s["user"] or None  # an empty name is no user
    s.remember = request.POST.get("remember") == "on"
    s.set("flash", f"Welcome, {s['user']}!", timeout=FLASH_SECONDS)
    return HttpResponseRedirect("/")


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return HttpResponseRedirect("/")


urlpatterns = [path("", index), path("login", login), path("logout", logout)]


def session_options(**options: Any) -> dict[str, Any]:
    """The ``WSGISESSION`` setting: *options*, a secret key and a store from the
    environment."""
    # Without SECRET_KEY a random key is used: fine for a demo, but sessions then end on
    # restart and differ between worker processes. Make one with secrets.token_urlsafe(32).
    options.setdefault("secret_key", os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32))
    options.setdefault("store", os.environ.get("SESSION_STORE", "file:./sessions"))
    return options


def create_app(*, wrap: bool = True, **options: Any) -> WSGIApplication:
    """Configure Django with *options* for the session, and return the WSGI application.

    With *wrap*, it is ``wsgisession.django.get_wsgi_application()``: the session wraps
    the whole application. Without, it is Django's own, and the middleware alone runs
    the session, as it does under ``runserver`` and Django's test client.
    """
    settings.configure(**SETTINGS, WSGISESSION=session_options(**options))
    if wrap:
        return wsgisession.django.get_wsgi_application()
    application: WSGIApplication = django.core.wsgi.get_wsgi_application()
    return application


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    port = int(os.environ.get("PORT", "8000"))
    print(f"Serving on http://127.0.0.1:{port}/")
    make_server("127.0.0.1", port, create_app()).serve_forever()
