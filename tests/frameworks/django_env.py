"""Django in the test process: its settings are configured once, then overridden per test.

Django's settings belong to the process, and several test modules run Django projects
with different settings (the example, the migration guides' before and after apps).
Each test takes :func:`django_settings` with the settings it needs, over a bare
configuration made the first time.

:func:`project` is a project on ``DjangoSessionMiddleware`` whose one URL, ``/run``,
answers with the view the test passes (:func:`visit`), and :func:`ask` runs a question
about ``request.session`` in one request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path

from tests.frameworks.servers import SECRET


def django_settings(**overrides: Any) -> override_settings:
    """Django's settings for one test: *overrides* over a bare configuration."""
    if not settings.configured:
        settings.configure(
            SECRET_KEY="django-tests-own-key-not-the-sessions",
            ALLOWED_HOSTS=["testserver", "localhost"],
            # Overriding DATABASES later is not supported; a test installs apps that use it.
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            USE_TZ=True,
        )
        django.setup()
    return override_settings(**overrides)


#: The middleware under test, as MIDDLEWARE names it.
OURS = "wsgisession.django.DjangoSessionMiddleware"
#: Not the default, so a test can tell the option reached the session.
REMEMBER = 1209600


def session_options(directory: Path, **more: Any) -> dict[str, Any]:
    """A ``WSGISESSION`` setting: a file store in *directory* and *more*."""
    return {
        "secret_key": SECRET,
        "store": f"file:{directory / 'sessions'}",
        "cleanup_interval": 0,
        "remember_me_timeout": REMEMBER,
        **more,
    }


def project(options: object, **overrides: Any) -> override_settings:
    """A project whose one URL runs the view a test passes, on our middleware."""
    return django_settings(
        **{"ROOT_URLCONF": __name__, "MIDDLEWARE": [OURS], "WSGISESSION": options, **overrides}
    )


def _run(request: HttpRequest) -> Any:
    """The one view of this URLconf: the function the test passed in the environ."""
    return request.META["test.view"](request)


urlpatterns = [path("run", _run)]


def visit(client: Client, view: Callable[[HttpRequest], HttpResponse], **extra: Any) -> Any:
    """Answer one request of *client* with *view*."""
    return client.get("/run", **{"test.view": view}, **extra)


def ask(client: Client, question: Callable[[Any], Any]) -> Any:
    """What *question* returns about ``request.session`` in one request of *client*."""
    answers = []

    def view(request: HttpRequest) -> HttpResponse:
        answers.append(question(request.session))
        return HttpResponse("ok")

    response = visit(client, view)
    assert response.status_code == 200
    return answers[0]
