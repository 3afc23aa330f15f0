"""The WSGI middleware: puts a session in the environ and saves it as the response starts."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from . import _clock
from ._headers import with_session_headers
from ._option_sources import DEFAULT_ENV_PREFIX
from ._saving import Saver
from .config import Config
from .cookies import SessionCookie
from .errors import ConfigError, SessionError, StoreError
from .ids import store_key
from .purge import Purger
from .serializers import resolve_serializer
from .session import Session
from .users import SessionInfo, is_handle, list_user_sessions

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from _typeshed import OptExcInfo

    from ._response import Kit


__all__ = ["SessionMiddleware", "get_session"]

#: The environ key :func:`get_session` reads, whatever ``environ_key`` says.
ENVIRON_KEY: Final = "wsgisession.session"


class SessionMiddleware:
    """Give a WSGI application a server-side session at ``environ["session"]``.

    The cookie carries only the signed session id; the data lives in the store.
    Options are checked here, so a bad one raises :exc:`ConfigError` at startup,
    never on a request, and the store is not contacted until a request needs it.

    :param app: The WSGI application to wrap.
    :param options: A mapping of options, which keyword arguments override, or a
        :class:`~wsgisession.config.Config` already checked.
    :raises ConfigError: An option is missing, unknown or of the wrong type.

    .. code-block:: python

        app = SessionMiddleware(app, secret_key=KEY, store="redis://localhost/0")
    """

    def __init__(
        self,
        app: WSGIApplication,
        options: Mapping[str, Any] | Config | None = None,
        /,
        **kwargs: Any,
    ) -> None:
        self.app = app
        if isinstance(options, Config) and not kwargs:
            config = options  # checked already, by from_ini or from_env
        elif isinstance(options, Config):
            raise ConfigError("pass options either as a Config or as keyword arguments")
        else:
            config = Config.from_options(options, **kwargs)
        self.config = config
        #: The store sessions are kept in.
        self.store = config.open_store()
        serializer = resolve_serializer(
            config.serializer, config.secret_key, config.secret_key_fallbacks
        )
        self._saver = Saver(config, self.store, serializer)
        self._kit: Kit = (self._saver, SessionCookie(config), _initial_data(config.initializer))
        self._environ_key = config.environ_key
        self._on_save_error = config.on_save_error
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
        return cls(app, Config.from_ini(path, section))

    @classmethod
    def from_env(
        cls,
        app: WSGIApplication,
        prefix: str = DEFAULT_ENV_PREFIX,
        environ: Mapping[str, str] | None = None,
        *,
        ignore: Iterable[str] = (),
    ) -> SessionMiddleware:
        """Build the middleware from environment variables, for twelve-factor deployments.

        ``WSGISESSION_SECRET_KEY``, ``WSGISESSION_TIMEOUT`` and so on set the options
        of those names, parsed like ini values; ``WSGISESSION_STORE_NAME`` sets the
        store option ``name``. Any other variable under the prefix is an error naming
        it, unless *ignore* lists it (see :meth:`Config.from_env`).

        :param app: The WSGI application to wrap.
        :param prefix: What every variable name starts with.
        :param environ: The variables to read; :data:`os.environ` by default.
        :param ignore: Variables under the prefix that are not options, by name or
            shell-style pattern (``"WSGISESSION_TEST_*"``).
        :raises ConfigError: A variable names no option or its value is bad (the
            message names it), or ``WSGISESSION_SECRET_KEY`` is unset.
        """
        return cls(app, Config.from_env(prefix, environ, ignore=ignore))

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Handle one request: a lazy session in, its cookie and its save out.

        The application's ``start_response`` is held back until the application has
        returned (or, for a generator that calls it lazily, produced its first chunk),
        and the session is saved then: an application that raises after calling
        ``start_response`` saves nothing, and the cookie always reflects what was
        really stored.
        """
        purger = self._purger
        if purger is not None and not purger.started:
            purger.start()
        session = Session(self._kit, environ, start_response)
        environ[self._environ_key] = session
        environ[ENVIRON_KEY] = session
        try:
            iterable = self.app(environ, session.start_response)
        except BaseException:
            session.fail()
            raise
        kind = type(iterable)
        plain = kind is list or kind is tuple
        try:
            # A list's or tuple's iteration runs no application code: nothing is left to
            # save once its headers are out, so the server gets the body itself.
            sent = session.send_headers(plain)
        except StoreError as exc:
            _close(iterable)
            if self._on_save_error is None:
                raise
            return self._answer_save_error(environ, start_response, session, exc)
        except BaseException:
            _close(iterable)
            raise
        if not sent:
            # A generator that calls start_response during its first step.
            answer = None
            if self._on_save_error is not None:
                answer = functools.partial(
                    self._answer_save_error, environ, start_response, session
                )
            return _Response(iterable, session, answer)
        if plain and session.finished:
            return iterable  # the session was finished with its headers
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(wrapper, type) and isinstance(iterable, wrapper):
            # Iterating the server's file wrapper runs no application code either, and
            # the server can send the file with sendfile().
            session.hand_over()
            return iterable
        # The headers are out: the body only has to tell the session how it ended.
        return _Body(iterable, session)

    def _answer_save_error(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        session: Session,
        error: StoreError,
    ) -> Iterable[bytes]:
        """Answer with ``on_save_error``'s application: the save after the app failed.

        Nothing was stored and no header went out, so its page can still replace the
        response. The session is finished: the page may read it, never change it.
        """
        assert self._on_save_error is not None
        session.fail()
        session.hand_over()
        answer: WSGIApplication = self._on_save_error(environ, error)

        def start_varied(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            # The page may show the session it could not save.
            return start_response(status, with_session_headers(headers, []), exc_info)

        return answer(environ, start_varied)

    def user_sessions(self, user_id: str) -> list[SessionInfo]:
        """Return *user_id*'s live sessions, newest ``created_at`` first.

        Sessions link to a user through :attr:`Session.user_id`. An expired or ended
        session is never listed.

        :raises StoreError: The store failed.
        """
        return self._saver.timed(
            None,
            list_user_sessions,
            self.store,
            user_id,
            _clock.now(),
            self.config.absolute_timeout,
        )

    def end_session(self, handle: str) -> bool:
        """End the session whose :attr:`SessionInfo.handle` is *handle*.

        Return ``True`` if it was live. A string that is not a handle ends nothing, nor
        does the handle of a session regenerated since it was listed: the session lives
        on under its new id, and the old one's tombstone stays for the requests still
        carrying its cookie.

        :raises StoreError: The store failed.
        """
        if not is_handle(handle):
            return False
        return self._saver.end(handle)

    def end_user_sessions(self, user_id: str, *, keep: str | Session | None = None) -> int:
        """End every session of *user_id* except *keep*; return how many were ended.

        *keep* is a handle or a :class:`Session` (typically the current request's, for
        "log out other devices").

        :raises StoreError: The store failed.
        """
        if isinstance(keep, Session):
            # Its handle now, and the one a regenerate in this request will give it.
            spared = {keep.handle, None if keep.id is None else store_key(keep.id)}
        else:
            spared = {keep}
        ended = 0
        for info in self.user_sessions(user_id):
            if info.handle not in spared and self._saver.end(info.handle):
                ended += 1
        return ended

    def metrics(self) -> dict[str, Any]:
        """Return counters since start and store latency percentiles.

        The counters are ``requests`` (that touched a session), ``loads``, ``saves``,
        ``refreshes``, ``conflicts`` (concurrent saves merged), ``expired``,
        ``corrupt``, ``store_errors``, ``locked_saves`` (saves that lost a race and
        took the session's save lock) and ``lock_wait_seconds`` (the time those took,
        in all); ``store_latency`` holds ``count``, ``sum``, ``p50`` and ``p99``, in
        seconds (``None`` before the first store call).
        """
        return self._saver.metrics.snapshot()

    def store_latency_histogram(self) -> tuple[list[tuple[float, int]], float, int]:
        """Return the store latency histogram: cumulative buckets, the sum and the count.

        Each bucket is ``(upper bound in seconds, count)``, the last bound being
        ``float("inf")``; the bounds are :data:`wsgisession.events.LATENCY_BUCKETS`.
        """
        return self._saver.metrics.histogram()

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


def _close(iterable: Iterable[bytes]) -> None:
    """Close the application's iterable, as the server would have."""
    close = getattr(iterable, "close", None)
    if close is not None:
        close()


class _Body:
    """The body of a response whose headers went out before the application returned.

    Nothing is held back any more, so iterating it only notes how the body ended: a
    session first touched, or changed, while the body is produced is saved when the
    server closes it, unless the body failed or was abandoned. A response whose
    session nobody touches pays one small object and a generator for that.
    """

    __slots__ = ("_exhausted", "_iterable", "_session")

    def __init__(self, iterable: Iterable[bytes], session: Session) -> None:
        self._iterable = iterable
        self._session = session
        self._exhausted = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            # A for loop, not ``yield from``: that would close the application's
            # iterator when this generator is collected, after the server's close().
            for chunk in self._iterable:  # noqa: UP028
                yield chunk
        except BaseException:
            self._session.fail()
            raise
        self._exhausted = True

    def close(self) -> None:
        """Close the application's iterable, then save what changed during the body.

        A body not exhausted failed or was abandoned (the client went away): the
        session then saves nothing more.
        """
        close = getattr(self._iterable, "close", None)
        try:
            if close is not None:
                close()
        except BaseException:
            self._session.close(completed=False)
            raise
        self._session.close(completed=self._exhausted)


class _Response(_Body):
    """The body of a response whose application returned before calling ``start_response``.

    A generator calls it during its first step: the session is saved, and the headers
    sent, when the first chunk comes (or the generator ends without one). A failed
    save then raises, or is answered by ``on_save_error``'s page. Like :class:`_Body`,
    it tells the session how the body ended when the server closes it.
    """

    __slots__ = ("_answer", "_failure")

    def __init__(
        self,
        iterable: Iterable[bytes],
        session: Session,
        answer: Callable[[StoreError], Iterable[bytes]] | None,
    ) -> None:
        super().__init__(iterable, session)
        self._answer = answer
        self._failure: StoreError | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            out = False
            for chunk in self._iterable:
                if not out:
                    out = self._send()
                    if self._failure is not None:
                        yield from self._answered()
                        return
                yield chunk
            if not out:
                # A generator that called it and yielded nothing.
                self._send()
                if self._failure is not None:
                    yield from self._answered()
                    return
        except BaseException:
            self._session.fail()
            raise
        self._exhausted = True

    def _send(self) -> bool:
        """Send the headers, if given; whether they are out.

        A failed save raises, or with ``on_save_error`` is kept for its page to answer.
        """
        try:
            return self._session.send_headers()
        except StoreError as exc:
            if self._answer is None:
                raise
            self._failure = exc
            return False

    def _answered(self) -> Iterator[bytes]:
        assert self._answer is not None and self._failure is not None
        body = self._answer(self._failure)
        try:
            yield from body
        finally:
            _close(body)


def _initial_data(
    initializer: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
) -> Callable[[], dict[str, Any]] | None:
    """What makes a new session's data: a deep copy of ``initializer``, or ``None``."""
    if initializer is None:
        return None
    if not callable(initializer):
        return lambda: copy.deepcopy(dict(initializer))

    def fresh() -> dict[str, Any]:
        items = initializer()
        if not isinstance(items, Mapping):
            raise TypeError(
                f"option 'initializer' returned {type(items).__name__!r}: it must return "
                "a mapping of the new session's items"
            )
        return copy.deepcopy(dict(items))

    return fresh
