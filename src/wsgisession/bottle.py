"""Bottle helpers: a plugin that passes the session to routes that ask for it.

The middleware still wraps the application; the plugin only hands each route the
session of its request, as ``bottle-sqlite`` hands it a connection:

.. code-block:: python

    import bottle
    from wsgisession import SessionMiddleware
    from wsgisession.bottle import SessionPlugin

    bottle_app = bottle.Bottle()
    bottle_app.install(SessionPlugin())

    @bottle_app.get("/")
    def index(session):  # routes without a ``session`` argument are left alone
        session["count"] = session.get("count", 0) + 1
        return str(session["count"])

    app = SessionMiddleware(bottle_app, secret_key=KEY)

Elsewhere, :func:`session` returns the same object.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import bottle

from .middleware import get_session
from .session import Session

__all__ = ["SessionPlugin", "session"]


def session() -> Session:
    """Return the session of the request Bottle is handling.

    :raises SessionError: The app is not wrapped in :class:`SessionMiddleware`.
    """
    return get_session(bottle.request.environ)


class SessionPlugin:
    """Pass the request's session to every route callback taking *keyword*.

    :param keyword: The name of the callback argument that receives the session.
    """

    api: ClassVar[int] = 2

    def __init__(self, keyword: str = "session") -> None:
        self.keyword = keyword
        #: Bottle applies one plugin of a name: each keyword's plugin has its own
        #: (``skip=["wsgisession"]`` names the default one).
        self.name = "wsgisession" if keyword == "session" else f"wsgisession.{keyword}"

    def setup(self, app: bottle.Bottle) -> None:
        """Refuse a second plugin that would fill the same argument."""
        for other in app.plugins:
            if isinstance(other, SessionPlugin) and other.keyword == self.keyword:
                raise bottle.PluginError(
                    f"another SessionPlugin already fills the {self.keyword!r} argument"
                )

    def apply(self, callback: Callable[..., Any], route: bottle.Route) -> Callable[..., Any]:
        """Wrap *callback* if it takes the keyword; return it unchanged otherwise."""
        if self.keyword not in route.get_callback_args():
            return callback
        keyword = self.keyword

        @functools.wraps(callback)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[keyword] = session()
            return callback(*args, **kwargs)

        return wrapper
