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

import dataclasses
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

import web
from web.session import SessionExpired

from ._view import SessionView
from .config import Config
from .errors import ConfigError, SessionError
from .middleware import SessionMiddleware, get_session
from .session import Session

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

__all__ = ["WebpySession"]

# Set while a web.py-style initializer runs: what it writes to the session goes here.
_FILLING: ContextVar[dict[str, Any] | None] = ContextVar("wsgisession_webpy_filling", default=None)
# Where a request keeps ``session.send_cookie``, web.py's per-request switch.
_SEND_COOKIE: Final = "wsgisession.webpy.send_cookie"


class WebpySession(SessionView):
    """The session of the request being handled, with web.py's attribute access.

    ``session.count`` reads a key (a missing one raises :exc:`AttributeError`),
    ``session.count = 1`` writes it, ``del session.count`` removes it; ``session["count"]``
    and the other mapping operations work too. A key named like a method or property
    of this class (``get``, ``keys``, ``id``, ``set``...) is reached as ``session[name]``.

    :param app: The ``web.application`` to serve through the middleware.
    :param options: A mapping of :class:`SessionMiddleware` options; keyword arguments
        override it. ``initializer`` (web.py's) is one of them: a mapping that every new
        session starts with, or a callable that either returns one or, as web.py's did,
        fills the new session itself (``session.count = 0``) and returns ``None``.
    :raises ConfigError: An option is missing, unknown or of the wrong type.
    :raises SessionError: *app* already has a :class:`WebpySession`.
    """

    __slots__ = ("middleware",)

    #: The middleware serving the application.
    middleware: SessionMiddleware

    def __init__(
        self, app: Any, options: Mapping[str, Any] | Config | None = None, /, **kwargs: Any
    ):
        if isinstance(app.wsgifunc, _WrappedWsgiFunc):
            raise SessionError("this web.application already has a WebpySession")
        if isinstance(options, Config):
            if kwargs:
                raise ConfigError("pass options either as a Config or as keyword arguments")
            config = options
        else:
            config = Config.from_options(options, **kwargs)
        initializer = config.initializer
        if callable(initializer) and not isinstance(initializer, Mapping):
            config = dataclasses.replace(config, initializer=_filling(initializer))
        middleware = SessionMiddleware(app.wsgifunc(), config)
        object.__setattr__(self, "middleware", middleware)
        app.wsgifunc = _WrappedWsgiFunc(middleware)
        app.add_processor(self._processor)

    def _processor(self, handler: Callable[[], Any]) -> Any:
        web.ctx.session = self
        try:
            return handler()
        finally:
            # Raised responses too (web.seeother): web.py checks in a finally as well.
            if web.ctx.env.get(_SEND_COOKIE) is False:
                # web.py's send_cookie = False: this request neither saves nor sends a
                # cookie.
                self._current().fail()

    def _session(self) -> Session:
        if _FILLING.get() is not None:
            # The members beyond the mapping (set, incr, append, remember...) need the
            # session being started, which is only made of what the initializer gives.
            raise SessionError(
                "a web.py-style initializer fills the new session through attribute and "
                "mapping access (session.count = 0, len, keys); set(), incr(), append(), "
                "remember and the rest wait for a handler"
            )
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
            return self._data()[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            self._data()[name] = value

    def __delattr__(self, name: str) -> None:
        if hasattr(type(self), name):
            object.__delattr__(self, name)
            return
        try:
            del self._data()[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data()

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())

    def _data(self) -> MutableMapping[str, Any]:
        """The session's keys; while a web.py-style initializer runs, what it fills."""
        filling = _FILLING.get()
        return self._current() if filling is None else filling

    def __repr__(self) -> str:
        return "<WebpySession>"

    # -- the session ------------------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The session id, or ``None`` for a new session that has not been saved."""
        if _FILLING.get() is not None:
            return None  # a web.py-style initializer fills a session not saved yet
        return self._current().id

    @property
    def session_id(self) -> str | None:
        """web.py's name for :attr:`id`."""
        return self.id

    @property
    def user_id(self) -> Any:
        """The key ``user_id``, as web.py apps keep it (any value).

        It links no user: :attr:`wsgi_session`'s ``user_id`` does that, for
        :meth:`~wsgisession.SessionMiddleware.user_sessions` and the rest.
        """
        try:
            return self._data()["user_id"]
        except KeyError:
            raise AttributeError("user_id") from None

    @user_id.setter
    def user_id(self, value: Any) -> None:
        self._data()["user_id"] = value

    @user_id.deleter
    def user_id(self) -> None:
        try:
            del self._data()["user_id"]
        except KeyError:
            raise AttributeError("user_id") from None

    @property
    def wsgi_session(self) -> Session:
        """The wsgisession :class:`~wsgisession.Session` of the request, behind this one:
        ``session.wsgi_session.user_id = name`` links it to a user."""
        return self._session()

    @property
    def expired(self) -> _Expired:
        """Whether the request's cookie named a session that expired or is gone.

        It reads as a bool; called, as web.py's ``session.expired()`` was, it ends the
        session and answers web.py's ``SessionExpired`` with its ``expired_message``.
        """
        return _Expired(self._session())

    @property
    def ip(self) -> str | None:
        """The address of the client of this request (web.py's ``session.ip``)."""
        address = web.ctx.get("ip")
        return address if isinstance(address, str) else None

    @property
    def send_cookie(self) -> bool:
        """web.py's switch: set it to ``False`` and this request saves nothing and sends
        no session cookie (a logout already done stays done)."""
        self._current()  # outside a request, say so
        return web.ctx.env.get(_SEND_COOKIE, True) is not False

    @send_cookie.setter
    def send_cookie(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"send_cookie must be True or False, got {type(value).__name__}")
        self._current()  # outside a request, say so
        web.ctx.env[_SEND_COOKIE] = value

    def kill(self) -> None:
        """web.py's name for :meth:`invalidate`."""
        self._session().invalidate()


class _Expired:
    """``session.expired``: a bool that, called, does what web.py's ``expired()`` did."""

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    def __bool__(self) -> bool:
        return self._session.expired

    def __eq__(self, other: object) -> bool:
        return bool(self) == other

    def __hash__(self) -> int:
        return hash(bool(self))

    def __repr__(self) -> str:
        return repr(bool(self))

    def __call__(self) -> None:
        self._session.invalidate()
        message = web.config.get("session_parameters", {}).get("expired_message")
        raise SessionExpired(message or "Session expired")


def _filling(initializer: Callable[[], Any]) -> Callable[[], Mapping[str, Any]]:
    """Make web.py's kind of initializer, which fills the session and returns nothing,
    into one that returns the new session's items; one that returns them is kept."""

    def initial() -> Mapping[str, Any]:
        filling: dict[str, Any] = {}
        token = _FILLING.set(filling)
        try:
            result = initializer()
        finally:
            _FILLING.reset(token)
        if result is None:
            return filling
        if isinstance(result, Mapping):
            return {**filling, **result}
        raise TypeError(
            f"initializer returned {type(result).__name__!r}: return a mapping of the new "
            "session's items, or fill the session and return None (web.py's way)"
        )

    return initial


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
