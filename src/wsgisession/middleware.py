"""The WSGI middleware: puts a session in the environ and saves it as the response starts."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from . import _clock
from ._engine import Engine
from .config import Config
from .cookies import SessionCookie
from .errors import SessionError
from .purge import Purger
from .serializers import resolve_serializer
from .session import Session
from .users import SessionInfo, is_handle, list_user_sessions

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

        Keys are the option names; ``store.NAME`` keys go to ``store_options``. A
        file without the section is read as a PasteDeploy file: the options are then
        the keys of ``[app:main]`` that start with ``session.`` (*section* and a dot),
        such as ``session.secret_key`` or ``session.store.table_name``.

        :raises ConfigError: The file, the section or an option is bad.
        """
        config = Config.from_ini(path, section)
        return cls(app, {name: getattr(config, name) for name in config.__dataclass_fields__})

    @classmethod
    def from_env(
        cls,
        app: WSGIApplication,
        prefix: str = "WSGISESSION_",
        environ: Mapping[str, str] | None = None,
    ) -> SessionMiddleware:
        """Build the middleware from environment variables, for twelve-factor deployments.

        ``WSGISESSION_SECRET_KEY``, ``WSGISESSION_TIMEOUT`` and so on set the options
        of those names, parsed like ini values; ``WSGISESSION_STORE_NAME`` sets the
        store option ``name``. Other variables under the prefix are ignored.

        :param app: The WSGI application to wrap.
        :param prefix: What every variable name starts with.
        :param environ: The variables to read; :data:`os.environ` by default.
        :raises ConfigError: A variable's value is bad (the message names it) or
            ``WSGISESSION_SECRET_KEY`` is unset.
        """
        config = Config.from_env(prefix, environ)
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
            if exc_info is None:
                # Some start_response callables (web.py's test helper) take two arguments.
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        try:
            app_iter = self.app(environ, session_start_response)
        except BaseException:
            session._failed = True
            raise
        return _Response(app_iter, session, engine)

    def user_sessions(self, user_id: str) -> list[SessionInfo]:
        """Return *user_id*'s live sessions, newest ``created_at`` first.

        Sessions link to a user through :attr:`Session.user_id`. An expired or ended
        session is never listed.

        :raises StoreError: The store failed.
        """
        engine = self._engine
        return engine.call(None, list_user_sessions, self.store, user_id, _clock.now())

    def end_session(self, handle: str) -> bool:
        """End the session whose :attr:`SessionInfo.handle` is *handle*.

        Return ``True`` if it was live. A string that is not a handle ends nothing.

        :raises StoreError: The store failed.
        """
        if not is_handle(handle):
            return False
        return self._engine.delete(handle)

    def end_user_sessions(self, user_id: str, *, keep: str | Session | None = None) -> int:
        """End every session of *user_id* except *keep*; return how many were ended.

        *keep* is a handle or a :class:`Session` (typically the current request's, for
        "log out other devices").

        :raises StoreError: The store failed.
        """
        spared: set[str] = set()
        if isinstance(keep, Session):
            spared = set(keep._handles())
        elif keep is not None:
            spared = {keep}
        ended = 0
        for info in self.user_sessions(user_id):
            if info.handle not in spared and self._engine.delete(info.handle):
                ended += 1
        return ended

    def metrics(self) -> dict[str, Any]:
        """Return counters since start and store latency percentiles.

        The counters are ``requests`` (that touched a session), ``loads``, ``saves``,
        ``refreshes``, ``conflicts`` (concurrent saves merged), ``expired``,
        ``corrupt`` and ``store_errors``; ``store_latency`` holds ``count``, ``sum``,
        ``p50`` and ``p99``, in seconds (``None`` before the first store call).
        """
        return self._engine.metrics.snapshot()

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
