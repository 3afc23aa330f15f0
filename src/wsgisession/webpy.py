"""web.py helpers: what ``web.session.Session`` gave a ``web.application``, on wsgisession.

Coming from web.py's sessions takes two lines, an import and the constructor:

.. code-block:: python

    from wsgisession.webpy import WebpySession

    app = web.application(urls, locals())
    session = WebpySession(app, secret_key=KEY, initializer={"count": 0})

    class count:
        def GET(self):
            session.count += 1
            return str(session.count)

:class:`WebpySession` wraps the application's WSGI function in
:class:`SessionMiddleware` (so ``app.run()``, ``app.wsgifunc()`` and
``app.request()`` all serve through it), installs a processor that puts it at
``web.ctx.session``, and reads and writes the session of the request being handled.
It keeps no request state itself, so it also works with ``web.config.debug = True``,
whose reloader imports the module again and builds a second ``WebpySession``: no
``web.config._session`` trick is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import web

from ._view import SessionView
from .errors import SessionError
from .middleware import SessionMiddleware, get_session
from .session import Session

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

__all__ = ["WebpySession"]


class WebpySession(SessionView):
    """The session of the request being handled, with web.py's attribute access.

    ``session.count`` reads a key (a missing one raises :exc:`AttributeError`),
    ``session.count = 1`` writes it, ``del session.count`` removes it; ``session["count"]``
    and the other mapping operations work too. A key named like a method or property
    of this class (``get``, ``keys``, ``id``, ``set``...) is reached as ``session[name]``.

    :param app: The ``web.application`` to serve through the middleware.
    :param options: A mapping of :class:`SessionMiddleware` options; keyword arguments
        override it. ``initializer`` (web.py's) is one of them: a mapping, or a callable
        *returning* one, that every new session starts with.
    :raises ConfigError: An option is missing, unknown or of the wrong type.
    :raises SessionError: *app* already has a :class:`WebpySession`.
    """

    __slots__ = ("middleware",)

    #: The middleware serving the application.
    middleware: SessionMiddleware

    def __init__(self, app: Any, options: Mapping[str, Any] | None = None, /, **kwargs: Any):
        if isinstance(app.wsgifunc, _WrappedWsgiFunc):
            raise SessionError("this web.application already has a WebpySession")
        middleware = SessionMiddleware(app.wsgifunc(), options, **kwargs)
        object.__setattr__(self, "middleware", middleware)
        app.wsgifunc = _WrappedWsgiFunc(middleware)
        app.add_processor(self._processor)

    def _processor(self, handler: Callable[[], Any]) -> Any:
        web.ctx.session = self
        return handler()

    def _session(self) -> Session:
        return self._current()

    @staticmethod
    def _current() -> Session:
        try:
            environ = web.ctx.env
        except AttributeError:
            raise SessionError("no web.py request is being handled") from None
        return get_session(environ)

    # -- attributes -------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Only called for names the class does not have: those are session keys.
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._current()[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            self._current()[name] = value

    def __delattr__(self, name: str) -> None:
        if hasattr(type(self), name):
            object.__delattr__(self, name)
            return
        try:
            del self._current()[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return "<WebpySession>"

    # -- the session ------------------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The session id, or ``None`` for a new session that has not been saved."""
        return self._current().id

    @property
    def session_id(self) -> str | None:
        """web.py's name for :attr:`id`."""
        return self._current().id

    @property
    def expired(self) -> bool:
        """``True`` when the request's cookie named a session that expired or is gone."""
        return self._current().expired

    def kill(self) -> None:
        """web.py's name for :meth:`invalidate`."""
        self._current().invalidate()


class _WrappedWsgiFunc:
    """Stands in for ``app.wsgifunc``: the same WSGI function, inside the middleware."""

    __slots__ = ("middleware",)

    def __init__(self, middleware: SessionMiddleware) -> None:
        self.middleware = middleware

    def __call__(self, *middleware: Callable[[WSGIApplication], WSGIApplication]) -> Any:
        # web.py's own wsgifunc applies the extra middleware the same way, innermost first.
        wsgi: WSGIApplication = self.middleware
        for wrap in middleware:
            wsgi = wrap(wsgi)
        return wsgi
