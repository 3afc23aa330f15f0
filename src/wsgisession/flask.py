"""Flask helpers: wrap an app in one call and reach its session through a typed accessor.

.. code-block:: python

    from flask import Flask
    from wsgisession.flask import current_session, init_app

    app = Flask(__name__)
    init_app(app, secret_key=KEY, store="redis://localhost/0")

    @app.get("/")
    def index() -> str:
        s = current_session()  # not flask.session, which is Flask's own cookie session
        s["count"] = s.get("count", 0) + 1
        return str(s["count"])

Neither is required: ``app.wsgi_app = SessionMiddleware(app.wsgi_app, ...)`` and
``get_session(flask.request.environ)`` do the same.

:func:`flash` and :func:`get_flashed_messages` are Flask's two flash functions over the
wsgisession session (:meth:`Session.flash`), so each message is shown once even when
a user's requests run in parallel; ``init_app`` makes templates'
``get_flashed_messages()`` this one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import flask
from flask.globals import app_ctx
from flask.signals import message_flashed

from .errors import SessionError
from .middleware import SessionMiddleware, get_session
from .session import Session

__all__ = ["current_session", "flash", "get_flashed_messages", "init_app"]

#: The key of ``app.extensions`` that holds the middleware.
EXTENSION_KEY: Final = "wsgisession"

# Where a request keeps the messages it popped, so every call in it sees the same ones.
_POPPED: Final = "wsgisession.flask.flashes"


def init_app(
    app: flask.Flask, options: Mapping[str, Any] | None = None, /, **kwargs: Any
) -> SessionMiddleware:
    """Wrap *app*'s WSGI callable in :class:`SessionMiddleware` and return the middleware.

    The middleware also goes to ``app.extensions["wsgisession"]``, for
    ``user_sessions()`` and the other per-user calls, and templates'
    ``get_flashed_messages()`` becomes :func:`get_flashed_messages`. Options are the
    middleware's.

    :param app: The Flask application.
    :param options: A mapping of options; keyword arguments override it.
    :raises ConfigError: An option is missing, unknown or of the wrong type.
    :raises SessionError: *app* was already given a session middleware.
    """
    if EXTENSION_KEY in app.extensions:
        raise SessionError("init_app() was already called on this Flask app")
    if isinstance(app.wsgi_app, SessionMiddleware):
        raise SessionError(
            "this Flask app's wsgi_app is a SessionMiddleware already: wrap it once, by "
            "hand or with init_app()"
        )
    middleware = SessionMiddleware(app.wsgi_app, options, **kwargs)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    app.extensions[EXTENSION_KEY] = middleware
    app.add_template_global(get_flashed_messages)
    return middleware


def current_session() -> Session:
    """Return the session of the request being handled.

    :raises RuntimeError: There is no request (Flask's "working outside of request
        context").
    :raises SessionError: The app is not wrapped in :class:`SessionMiddleware`.
    """
    return get_session(flask.request.environ)


def flash(message: Any, category: str = "message") -> None:
    """Queue *message* for a later request, like :func:`flask.flash`, in our session.

    It sends Flask's ``message_flashed`` signal too, as :func:`flask.flash` does.

    :raises SessionError: The app is not wrapped in :class:`SessionMiddleware`.
    """
    current_session().flash(message, category)
    app = app_ctx.app
    message_flashed.send(app, _async_wrapper=app.ensure_sync, message=message, category=category)


def get_flashed_messages(
    with_categories: bool = False, category_filter: Iterable[str] = ()
) -> list[Any]:
    """The queued flash messages, like :func:`flask.get_flashed_messages`.

    The first call in a request takes every queued message from the session; later
    calls in the same request see the same ones. Messages that other code queued with
    :func:`flask.flash`, in Flask's own session (Flask-Login's ``login_required``),
    come first. With *category_filter*, only those categories are returned; with
    *with_categories*, ``(category, message)`` pairs.

    :raises SessionError: The app is not wrapped in :class:`SessionMiddleware`.
    """
    environ = flask.request.environ
    popped: list[tuple[str, Any]] | None = environ.get(_POPPED)
    if popped is None:
        # Flask's own queue is taken as Flask takes it; without app.secret_key it is
        # always empty.
        theirs = flask.get_flashed_messages(with_categories=True)
        popped = environ[_POPPED] = [*theirs, *current_session().pop_flashes()]
    # A lone category, as Flask's own substring test happens to take it.
    wanted = {category_filter} if isinstance(category_filter, str) else set(category_filter)
    pairs = [pair for pair in popped if not wanted or pair[0] in wanted]
    return pairs if with_categories else [message for _, message in pairs]
