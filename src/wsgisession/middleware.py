"""The WSGI middleware: puts a session in the environ and saves it as the response starts."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from ._engine import Engine
from .config import Config
from .cookies import SessionCookie
from .errors import SessionError
from .purge import Purger
from .serializers import resolve_serializer
from .session import Session

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from _typeshed import OptExcInfo

__all__ = ["SessionMiddleware", "get_session"]

#: The environ key :func:`get_session` reads, whatever ``environ_key`` says.
ENVIRON_KEY: Final = "wsgisession.session"


class SessionMiddleware:
    """Give a WSGI application a server-side session at ``environ["session"]``.

    The cookie carries only the signed session id; the data lives in the store.
    Options are checked here, so a bad one raises :exc:`ConfigError` at startup,
    never on a request, and the store is not contacted until a request needs it.

    :param app: The WSGI application to wrap.
    :param options: A mapping of options; keyword arguments override it.
    :raises ConfigError: An option is missing, unknown or of the wrong type.

    .. code-block:: python

        app = SessionMiddleware(app, secret_key=KEY, store="redis://localhost/0")
    """

    def __init__(
        self, app: WSGIApplication, options: Mapping[str, Any] | None = None, /, **kwargs: Any
    ) -> None:
        self.app = app
        self.config = config = Config.from_options(options, **kwargs)
        #: The store sessions are kept in.
        self.store = config.open_store()
        serializer = resolve_serializer(
            config.serializer, config.secret_key, config.secret_key_fallbacks
        )
        self._engine = Engine(config, self.store, serializer, SessionCookie(config))
        self._environ_key = config.environ_key
        self._purger: Purger | None = None
        if config.cleanup_interval and not self.store.native_expiry:
            self._purger = Purger(self.store, config.cleanup_interval)

    @classmethod
    def from_ini(
        cls, app: WSGIApplication, path: str | os.PathLike[str], section: str = "session"
    ) -> SessionMiddleware:
        """Build the middleware from *section* of the ini file at *path*.

        Keys are the option names; ``store.NAME`` keys go to ``store_options``.

        :raises ConfigError: The file, the section or an option is bad.
        """
        config = Config.from_ini(path, section)
        return cls(app, {name: getattr(config, name) for name in config.__dataclass_fields__})

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Handle one request: a lazy session in, its cookie and its save out."""
        purger = self._purger
        if purger is not None and not purger.started:
            purger.start()
        engine = self._engine
        session = Session(engine, environ)
        environ[self._environ_key] = session
        environ[ENVIRON_KEY] = session

        def session_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Any:
            failed = (exc_info is not None and exc_info[0] is not None) or status[:1] == "5"
            if failed:
                session._failed = True
            if session._loaded and not session._headers_sent:
                headers = _with_headers(headers, engine.finish(session, failed))
            elif session._loaded:
                headers = _with_headers(headers, [])
            session._headers_sent = True
            return start_response(status, headers, exc_info)

        try:
            app_iter = self.app(environ, session_start_response)
        except BaseException:
            session._failed = True
            raise
        return _Response(app_iter, session, engine)

    def close(self) -> None:
        """Stop the background purge and close the store."""
        if self._purger is not None:
            self._purger.stop()
        self.store.close()


def get_session(environ: WSGIEnvironment) -> Session:
    """Return the session of the request *environ* belongs to.

    :raises SessionError: The application is not wrapped in :class:`SessionMiddleware`.
    """
    try:
        session: Session = environ[ENVIRON_KEY]
    except KeyError:
        raise SessionError(
            "no session in this environ: wrap the application in SessionMiddleware"
        ) from None
    return session


def _with_headers(
    headers: list[tuple[str, str]], extra: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Return *headers* plus *extra*, ``Vary: Cookie`` and, with a cookie, Cache-Control.

    The application's headers are kept; an existing ``Vary`` is extended in place.
    """
    out = list(headers)
    vary_index = None
    has_cache_control = False
    for index, (name, _) in enumerate(out):
        lowered = name.lower()
        if lowered == "vary" and vary_index is None:
            vary_index = index
        elif lowered == "cache-control":
            has_cache_control = True
    if vary_index is None:
        out.append(("Vary", "Cookie"))
    else:
        name, value = out[vary_index]
        tokens = {token.strip().lower() for token in value.split(",")}
        if "cookie" not in tokens and "*" not in tokens:
            out[vary_index] = (name, f"{value}, Cookie" if value.strip() else "Cookie")
    if extra:
        out.extend(extra)
        if not has_cache_control:
            # A shared cache must never hand one user's cookie to another.
            out.append(("Cache-Control", 'no-cache="Set-Cookie"'))
    return out


class _Response:
    """The application's response, saving late changes when the server closes it."""

    __slots__ = ("_engine", "_iterable", "_session")

    def __init__(self, iterable: Iterable[bytes], session: Session, engine: Engine) -> None:
        self._iterable = iterable
        self._session = session
        self._engine = engine

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._iterable
        except BaseException:
            self._session._failed = True
            raise

    def close(self) -> None:
        """Close the application's iterable, then save what changed during the body."""
        session = self._session
        close = getattr(self._iterable, "close", None)
        if close is not None:
            try:
                close()
            except BaseException:
                session._failed = True
                raise
        if session._loaded and session._headers_sent and not session._failed:
            self._engine.finish_late(session)
