"""Before: a one-file Django project on Django's sessions (the "after" is
``django_after.py``).

A visit counter, a login with "remember me" that takes a new session key, and a
logout. Run it with ``python examples/migrations/django_before.py`` and open
http://127.0.0.1:8000/.
"""

from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING, Any

import django.core.wsgi
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

#: How long "remember me" keeps a user signed in: 30 days.
REMEMBER_SECONDS = 30 * 24 * 3600

SETTINGS: dict[str, Any] = {
    "SECRET_KEY": os.environ.get("SECRET_KEY", "dev-only-change-me"),
    "ALLOWED_HOSTS": ["127.0.0.1", "localhost", "testserver"],
    "ROOT_URLCONF": __name__,
    "MIDDLEWARE": ["django.contrib.sessions.middleware.SessionMiddleware"],
    "SESSION_ENGINE": "django.contrib.sessions.backends.file",
    "SESSION_COOKIE_AGE": 3600,
    "USE_TZ": True,
}


def index(request: HttpRequest) -> HttpResponse:
    request.session["count"] = request.session.get("count", 0) + 1
    return HttpResponse(page(request.session["count"], request.session.get("user")))


def login(request: HttpRequest) -> HttpResponse:
    request.session.cycle_key()  # against session fixation
    request.session["user"] = request.POST.get("username", "")
    request.session.set_expiry(REMEMBER_SECONDS if request.POST.get("remember") else 0)
    return HttpResponseRedirect("/")


def logout(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return HttpResponseRedirect("/")


urlpatterns = [path("", index), path("login", login), path("logout", logout)]


def create_app(directory: str = "./sessions") -> WSGIApplication:
    """Configure Django, its sessions in files under *directory*; return the application."""
    os.makedirs(directory, exist_ok=True)
    settings.configure(**SETTINGS, SESSION_FILE_PATH=directory)
    application: WSGIApplication = django.core.wsgi.get_wsgi_application()
    return application


def page(count: int, user: str | None) -> str:
    """The home page: the visit count, who is signed in, and the two forms."""
    who = f'<span id="user">{html.escape(user)}</span>' if user else "nobody"
    return (
        f'<!doctype html><p>Visits: <span id="count">{count}</span></p><p>Signed in: {who}</p>'
        '<form method="post" action="/login"><input name="username">'
        '<label><input type="checkbox" name="remember"> Remember me</label>'
        "<button>Log in</button></form>"
        '<form method="post" action="/logout"><button>Log out</button></form>'
    )


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    make_server("127.0.0.1", int(os.environ.get("PORT", "8000")), create_app()).serve_forever()
