"""Django helpers: ``request.session`` is the wsgisession session, with Django's API.

Put :class:`DjangoSessionMiddleware` in ``MIDDLEWARE`` where Django's own
``SessionMiddleware`` was, and the options of :class:`~wsgisession.SessionMiddleware`
in the ``WSGISESSION`` setting:

.. code-block:: python

    # settings.py
    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "wsgisession.django.DjangoSessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ]
    WSGISESSION = {"secret_key": os.environ["SESSION_SECRET_KEY"], "store": "redis://cache/0"}

That is all: views, ``django.contrib.auth``'s ``login()`` and ``logout()``, messages
and Django's test client (``django.test.Client``) then work on wsgisession's sessions.
The middleware runs each request's session itself, unless the WSGI application is
already wrapped in a :class:`~wsgisession.SessionMiddleware`; for that, ``wsgi.py``
can serve :func:`get_wsgi_application` instead of Django's, so that the session also
saves what changes while a streaming response is produced.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from http.cookies import Morsel
from typing import TYPE_CHECKING, Any, Final

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.utils.module_loading import import_string

from ._django_session import DjangoSession
from .config import Config
from .errors import ConfigError
from .middleware import ENVIRON_KEY, SessionMiddleware, get_session

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "DjangoSession",
    "DjangoSessionMiddleware",
    "get_wsgi_application",
    "session_middleware",
]

#: The setting that holds the options.
SETTING: Final = "WSGISESSION"

# Middleware that reads request.session when a request comes in, so ours must run first.
_NEEDS_SESSION: Final = (
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
)
# Where a request served by the Django middleware alone meets the WSGI middleware.
_EXCHANGE: Final = "wsgisession.django.exchange"
# Django's own session settings, which it would take and we don't, with our options
# that do their work where there is one.
_DJANGO_SESSION_SETTINGS: Final = {
    "SESSION_COOKIE_NAME": "cookie_name",
    "SESSION_COOKIE_AGE": "timeout",
    "SESSION_COOKIE_DOMAIN": "cookie_domain",
    "SESSION_COOKIE_SECURE": "cookie_secure",
    "SESSION_COOKIE_HTTPONLY": "cookie_httponly",
    "SESSION_COOKIE_PATH": "cookie_path",
    "SESSION_COOKIE_SAMESITE": "cookie_samesite",
    "SESSION_SAVE_EVERY_REQUEST": "save_every_request",
    "SESSION_SERIALIZER": "serializer",
    "SESSION_ENGINE": "store",
}


class DjangoSessionMiddleware:
    """Django middleware: ``request.session`` becomes a :class:`DjangoSession`.

    It reads its options from the ``WSGISESSION`` setting, a mapping of
    :class:`~wsgisession.SessionMiddleware` options or a
    :class:`~wsgisession.config.Config`, checked when Django loads its middleware.
    When the WSGI application is wrapped in a :class:`~wsgisession.SessionMiddleware`
    (see :func:`get_wsgi_application`), it shows that middleware's session; otherwise
    it runs the session through :func:`session_middleware` itself, so Django's test
    client, ``runserver`` and any server get sessions with no change to ``wsgi.py``.

    Run alone, it saves the session as the view's response leaves it, so a change
    made while a streaming response is produced raises :exc:`~wsgisession.SessionError`;
    serve :func:`get_wsgi_application` to save those too.

    :param get_response: The next middleware, or the view.
    :raises ~django.core.exceptions.ImproperlyConfigured: ``WSGISESSION`` is missing,
        Django's own ``SessionMiddleware`` is in ``MIDDLEWARE`` too, or middleware
        that needs ``request.session`` comes before this one.
    :raises ConfigError: An option in ``WSGISESSION`` is bad.
    """

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        _check_middleware_setting(type(self))
        self.get_response = get_response
        #: The middleware that runs the session when nothing wraps the application.
        self.wsgi_middleware = session_middleware()
        # Django sends cookies through http.cookies, which knows Partitioned from 3.14.
        self._cookie_unsendable = (
            self.wsgi_middleware.config.cookie_partitioned
            and not Morsel().isReservedKey("partitioned")
        )

    def __call__(self, request: Any) -> Any:
        """Give *request* its session, then answer it."""
        environ: WSGIEnvironment = request.META
        if ENVIRON_KEY in environ:
            # Wrapped in wsgi.py: that middleware runs the session.
            request.session = DjangoSession(get_session(environ), self.wsgi_middleware.config)
            return self.get_response(request)
        return self._serve(request, environ)

    def _serve(self, request: Any, environ: WSGIEnvironment) -> Any:
        """Run *request* through the WSGI middleware, then put its headers on the response."""
        if self._cookie_unsendable:
            raise ImproperlyConfigured(
                "cookie_partitioned needs Python 3.14's http.cookies when "
                "DjangoSessionMiddleware runs the session alone: serve "
                "wsgisession.django.get_wsgi_application() in wsgi.py instead"
            )
        exchange = _Exchange(request, self.get_response, self.wsgi_middleware.config)
        environ[_EXCHANGE] = exchange
        captured: list[tuple[str, str]] = []
        statuses: list[str] = []

        def start_response(status: str, headers: list[tuple[str, str]], *_: object) -> Any:
            statuses.append(status)
            captured[:] = headers
            return _ignore_body

        try:
            body = self.wsgi_middleware(environ, start_response)
            try:
                # Our own empty body, the session saved and finished by now; or the page
                # on_save_error answered with.
                content = b"".join(body)
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
        finally:
            del environ[_EXCHANGE]
        response = exchange.response
        if not statuses or statuses[-1] is not exchange.status:
            # The save failed, and this is on_save_error's page: the view's response
            # would tell the user that what was not saved was.
            status = statuses[-1] if statuses else "500 Internal Server Error"
            response = HttpResponse(content, status=int(status[:3]), reason=status[4:] or None)
        for name, value in captured:
            if name.lower() == "set-cookie":
                _set_cookie(response, value)
            elif response.get(name) != value:
                response[name] = value  # Vary: Cookie, Cache-Control
        return response


def _ignore_body(data: bytes) -> None:
    """The ``write()`` callable of a response whose body Django sends itself."""


class _Exchange:
    """One request on its way through the WSGI middleware and back out to Django."""

    __slots__ = ("config", "get_response", "request", "response", "status")

    def __init__(self, request: Any, get_response: Callable[[Any], Any], config: Config):
        self.request = request
        self.get_response = get_response
        self.config = config
        self.response: Any = None
        #: The status line given for the response, which the middleware passes on as
        #: it is: this very string, and not another page's, says the save succeeded.
        self.status: str | None = None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        request = self.request
        request.session = DjangoSession(get_session(environ), self.config)
        response = self.response = self.get_response(request)
        self.status = f"{response.status_code} {response.reason_phrase}"
        start_response(self.status, list(response.items()))
        # A list body: the WSGI middleware finishes the session at once, and the
        # body itself stays Django's to send.
        return []


def _set_cookie(response: Any, header: str) -> None:
    """Put the cookie of a ``Set-Cookie`` *header* of ours on Django's *response*.

    Django sends the cookies of ``response.cookies``, one ``Set-Cookie`` each, and
    its test client keeps those, so the header becomes a morsel there.
    """
    first, *attributes = header.split(";")
    name, _, value = first.strip().partition("=")
    response.cookies[name] = value
    morsel: Morsel[str] = response.cookies[name]
    for attribute in attributes:
        key, equals, attribute_value = attribute.strip().partition("=")
        morsel[key.lower()] = attribute_value if equals else True


class _DjangoApplication:
    """The application inside :func:`session_middleware`.

    It answers requests that :class:`DjangoSessionMiddleware` sent through it, and
    hands every other request to Django's WSGI handler, once
    :func:`get_wsgi_application` gave it one.
    """

    __slots__ = ("handler",)

    def __init__(self) -> None:
        self.handler: WSGIApplication | None = None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        exchange: _Exchange | None = environ.get(_EXCHANGE)
        if exchange is not None:
            return exchange(environ, start_response)
        if self.handler is None:
            raise ImproperlyConfigured(
                "wsgisession.django.session_middleware() is not an application by "
                "itself: serve wsgisession.django.get_wsgi_application()"
            )
        return self.handler(environ, start_response)


# One middleware per WSGISESSION value, so each test client (Django builds middleware
# per client) shares one store and purge, not one each. Keyed by the value's identity,
# which the entry keeps alive.
_BUILT: dict[int, tuple[object, SessionMiddleware]] = {}
_BUILDING: Final = threading.Lock()


def session_middleware() -> SessionMiddleware:
    """The :class:`~wsgisession.SessionMiddleware` built from the ``WSGISESSION`` setting.

    One per value of the setting, built on first use: the middleware
    :class:`DjangoSessionMiddleware` runs sessions through, and :func:`get_wsgi_application`
    serves. Views reach ``user_sessions()``, ``end_user_sessions()`` and the other
    per-user calls through it.

    :raises ~django.core.exceptions.ImproperlyConfigured: The setting is missing or
        is not a mapping or a :class:`~wsgisession.config.Config`.
    :raises ConfigError: An option in it is bad.
    """
    options = getattr(settings, SETTING, None)
    if options is None:
        raise ImproperlyConfigured(
            f"wsgisession needs the {SETTING} setting: a dict of SessionMiddleware "
            'options, at least {"secret_key": ...}'
        )
    if not isinstance(options, Mapping | Config):
        raise ImproperlyConfigured(
            f"the {SETTING} setting must be a dict of SessionMiddleware options or a "
            f"wsgisession.config.Config, got {type(options).__name__}"
        )
    with _BUILDING:
        built = _BUILT.get(id(options))
        if built is not None and built[0] is options:
            return built[1]
        try:
            middleware = SessionMiddleware(_DjangoApplication(), options)
        except ConfigError as exc:
            raise ConfigError(f"settings.{SETTING}: {exc}") from exc
        _BUILT[id(options)] = (options, middleware)
        _warn_ignored_settings()
        return middleware


def _warn_ignored_settings() -> None:
    """Warn about each of Django's session settings left set: silently ignored, a
    ``SESSION_COOKIE_SECURE`` would leave the cookie without Secure behind TLS."""
    for name, option in _DJANGO_SESSION_SETTINGS.items():
        if settings.is_overridden(name):
            warnings.warn(
                f"settings.{name} is Django's own sessions' and has no effect on "
                f"wsgisession: set {option!r} in settings.{SETTING} instead",
                UserWarning,
                stacklevel=2,
            )


def get_wsgi_application() -> SessionMiddleware:
    """Django's WSGI application, wrapped in :func:`session_middleware`.

    Use it in ``wsgi.py`` in place of ``django.core.wsgi.get_wsgi_application``: the
    session then wraps the whole application, and a change made while a streaming
    response is produced is saved when it ends.

    :raises ~django.core.exceptions.ImproperlyConfigured: As
        :class:`DjangoSessionMiddleware`, which must be in ``MIDDLEWARE``.
    :raises ConfigError: An option in ``WSGISESSION`` is bad.
    """
    from django.core.wsgi import get_wsgi_application as django_application

    handler = django_application()
    if not _listed(DjangoSessionMiddleware):
        raise ImproperlyConfigured(
            "add 'wsgisession.django.DjangoSessionMiddleware' to MIDDLEWARE: without "
            "it, request.session is not the wsgisession session"
        )
    middleware = session_middleware()
    application = middleware.app
    assert isinstance(application, _DjangoApplication)
    application.handler = handler
    return middleware


def _listed(cls: type) -> bool:
    """Whether *cls* (or a subclass) is in ``MIDDLEWARE``."""
    return any(_is_subclass(path, cls) for path in settings.MIDDLEWARE)


def _is_subclass(path: str, cls: type) -> bool:
    try:
        candidate = import_string(path)
    except ImportError:
        return False  # Django reports a broken entry itself
    return isinstance(candidate, type) and issubclass(candidate, cls)


def _check_middleware_setting(own: type) -> None:
    """Refuse a ``MIDDLEWARE`` where another session middleware or order would break ours."""
    from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessions

    # Django's own middleware that needs a session is known by name: importing
    # django.contrib.auth's needs the app installed, which Django checks itself.
    paths = [path for path in settings.MIDDLEWARE if path not in _NEEDS_SESSION]
    ours = next((path for path in paths if _is_subclass(path, own)), None)
    for path in settings.MIDDLEWARE if ours is not None else ():
        if path == ours:
            break
        if path in _NEEDS_SESSION:
            raise ImproperlyConfigured(
                f"MIDDLEWARE lists {path!r} before wsgisession's DjangoSessionMiddleware, "
                "but it needs request.session: move DjangoSessionMiddleware above it"
            )
    for path in paths:
        if _is_subclass(path, DjangoSessions):
            raise ImproperlyConfigured(
                f"MIDDLEWARE has {path!r} and wsgisession's DjangoSessionMiddleware: both "
                "would set request.session; remove Django's SessionMiddleware"
            )
