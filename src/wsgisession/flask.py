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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import flask

from .errors import SessionError
from .middleware import SessionMiddleware, get_session
from .session import Session

__all__ = ["current_session", "init_app"]

#: The key of ``app.extensions`` that holds the middleware.
EXTENSION_KEY: Final = "wsgisession"


def init_app(
    app: flask.Flask, options: Mapping[str, Any] | None = None, /, **kwargs: Any
) -> SessionMiddleware:
    """Wrap *app*'s WSGI callable in :class:`SessionMiddleware` and return the middleware.

    The middleware also goes to ``app.extensions["wsgisession"]``, for
    ``user_sessions()`` and the other per-user calls. Options are the middleware's.

    :param app: The Flask application.
    :param options: A mapping of options; keyword arguments override it.
    :raises ConfigError: An option is missing, unknown or of the wrong type.
    :raises SessionError: *app* was already given a session middleware.
    """
    if EXTENSION_KEY in app.extensions:
        raise SessionError("init_app() was already called on this Flask app")
    middleware = SessionMiddleware(app.wsgi_app, options, **kwargs)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    app.extensions[EXTENSION_KEY] = middleware
    return middleware


def current_session() -> Session:
    """Return the session of the request being handled.

    :raises RuntimeError: There is no request (Flask's "working outside of request
        context").
    :raises SessionError: The app is not wrapped in :class:`SessionMiddleware`.
    """
    return get_session(flask.request.environ)
