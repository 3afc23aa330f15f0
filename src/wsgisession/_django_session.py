"""Django's ``request.session`` API over a wsgisession session.

:class:`DjangoSession` is what :class:`~wsgisession.django.DjangoSessionMiddleware`
puts at ``request.session``; :mod:`wsgisession.django` exports it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Final, NoReturn

from django.conf import settings
from django.utils import timezone

from . import _clock
from ._expiry import Expiry
from ._view import SessionView
from .config import Config
from .errors import SessionError
from .session import Session

__all__ = ["DjangoSession"]


class DjangoSession(SessionView):
    """Django's ``request.session`` API over a wsgisession :class:`Session`.

    The mapping (``get``, ``setdefault``, ``pop``, ``keys``, ``items``, ``values``,
    ``update``, ``clear``...) is the session's own data, and so are wsgisession's
    members (:meth:`regenerate`, :meth:`invalidate`, :attr:`remember`,
    :attr:`user_id`, :meth:`incr`...); :attr:`wsgi_session` is the session itself.
    Django's names map onto them, and the few that can't work here raise
    :exc:`~wsgisession.SessionError` saying what to do instead.

    :param session: The request's session.
    :param config: The options it was made with, for the lifetimes Django's
        expiry methods report.
    """

    __slots__ = ("config", "wsgi_session")

    #: Django's names for the test cookie's key and value.
    TEST_COOKIE_NAME: Final = "testcookie"
    TEST_COOKIE_VALUE: Final = "worked"

    def __init__(self, session: Session, config: Config) -> None:
        #: The wsgisession :class:`Session` behind this one.
        self.wsgi_session = session
        #: The options of the middleware: ``timeout``, ``remember_me_timeout``...
        self.config = config

    def _session(self) -> Session:
        return self.wsgi_session

    def __repr__(self) -> str:
        return f"<DjangoSession over {self.wsgi_session!r}>"

    # -- state ----------------------------------------------------------------------

    @property
    def session_key(self) -> str | None:
        """The session id; ``None`` until a new session is stored, with the response."""
        return self.wsgi_session.id

    @property
    def accessed(self) -> bool:
        """``True`` once the request read or wrote the session."""
        return self.wsgi_session.accessed

    @property
    def modified(self) -> bool:
        """``True`` once data changed; assign ``True`` to force a save."""
        return self.wsgi_session.modified

    @modified.setter
    def modified(self, value: bool) -> None:
        self.wsgi_session.modified = value

    def is_empty(self) -> bool:
        """``True`` when the session is not stored and holds nothing."""
        return self.wsgi_session.id is None and not self.wsgi_session

    # -- the session's life ------------------------------------------------------------

    def cycle_key(self) -> None:
        """Give the session a new id, keeping its data: :meth:`regenerate`."""
        self.wsgi_session.regenerate()

    def flush(self) -> None:
        """End the session and start afresh: :meth:`invalidate`."""
        self.wsgi_session.invalidate()

    def set_expiry(self, value: float | datetime | timedelta | None) -> None:
        """Choose between the two lifetimes a session can have, in Django's terms.

        ``0`` and ``None`` make the session an ordinary one (``remember = False``): it
        ends ``timeout`` seconds after its last use, and its cookie when the browser
        closes unless ``cookie_max_age`` is set. Seconds, a :class:`~datetime.timedelta`
        or a :class:`~datetime.datetime` at least ``remember_me_timeout`` away make it
        a remembered one (``remember = True``), which lasts ``remember_me_timeout``
        from each use.

        :raises SessionError: *value* is a shorter lifetime: a session can't have one
            of its own; the message says what to do.
        :raises ValueError: *value* is negative, or a date in the past.
        :raises TypeError: *value* is none of those types.
        """
        if value is None or (type(value) in (int, float) and value == 0):
            self.wsgi_session.remember = False
            return
        seconds = _seconds(value)
        longest = self.config.remember_me_timeout
        if seconds >= longest:
            self.wsgi_session.remember = True
            return
        raise SessionError(
            f"set_expiry({value!r}): a session can't have a lifetime of its own; it "
            f"lasts {self._lifetime_named()} from its last use or, remembered, "
            f"'remember_me_timeout' ({longest} s). Use set_expiry(0) for a session that "
            f"ends with the browser, set_expiry({longest}) or remember = True for a "
            f"remembered one, or set the option remember_me_timeout to {math.ceil(seconds)} to "
            "remember sessions for that long"
        )

    def _lifetime_named(self) -> str:
        config = self.config
        if self.wsgi_session.user_id is None and config.anonymous_timeout is not None:
            return f"'anonymous_timeout' ({config.anonymous_timeout} s) without a user"
        return f"'timeout' ({config.timeout} s)"

    def get_expiry_age(
        self, *, modification: datetime | None = None, expiry: int | datetime | None = None
    ) -> int:
        """Seconds until the session ends unless it is used again (0 once it has).

        Given Django's keywords, the age they describe, as Django computes it: *expiry*
        seconds, or from *modification* (default now) to the *expiry* date; without an
        *expiry*, the lifetime a use gives the session.
        """
        if modification is None and expiry is None:
            return max(0, math.floor(self.wsgi_session.expires_at - _clock.now()))
        if not expiry:
            return self.get_session_cookie_age()
        if not isinstance(expiry, datetime):
            return expiry
        delta = expiry - (timezone.now() if modification is None else modification)
        return delta.days * 86400 + delta.seconds

    def get_expiry_date(
        self, *, modification: datetime | None = None, expiry: int | datetime | None = None
    ) -> datetime:
        """When the session ends unless it is used again.

        Aware, in UTC, with ``USE_TZ``; naive local time without, as Django's. Given
        Django's keywords, the date they describe: *expiry* itself if a date, else
        *modification* (default now) plus the age :meth:`get_expiry_age` gives.
        """
        if modification is not None or expiry is not None:
            if isinstance(expiry, datetime):
                return expiry
            start = timezone.now() if modification is None else modification
            return start + timedelta(seconds=expiry or self.get_session_cookie_age())
        expires_at = self.wsgi_session.expires_at
        if settings.USE_TZ:
            return datetime.fromtimestamp(expires_at, tz=UTC)
        return datetime.fromtimestamp(expires_at)

    def get_session_cookie_age(self) -> int:
        """The lifetime each use gives this session: ``remember_me_timeout`` when it is
        remembered, ``anonymous_timeout`` (if set) while it has no user, ``timeout``
        otherwise (Django's ``SESSION_COOKIE_AGE``)."""
        session = self.wsgi_session
        return Expiry.of(self.config).lifetime(session.remember, session.user_id is None)

    def get_expire_at_browser_close(self) -> bool:
        """Whether the session's cookie goes when the browser closes."""
        return not self.wsgi_session.remember and self.config.cookie_max_age is None

    # -- the test cookie --------------------------------------------------------------

    def set_test_cookie(self) -> None:
        """Store Django's test value, to see on the next request if cookies work."""
        self.wsgi_session[self.TEST_COOKIE_NAME] = self.TEST_COOKIE_VALUE

    def test_cookie_worked(self) -> bool:
        """Whether a test value set by an earlier request came back."""
        worked: bool = self.wsgi_session.get(self.TEST_COOKIE_NAME) == self.TEST_COOKIE_VALUE
        return worked

    def delete_test_cookie(self) -> None:
        """Remove the test value."""
        del self.wsgi_session[self.TEST_COOKIE_NAME]

    # -- what a session store did in Django -------------------------------------------

    def save(self, must_create: bool = False) -> NoReturn:
        """Refused: the middleware saves the session with the response.

        :raises SessionError: Always.
        """
        raise SessionError(
            "request.session.save() is not needed: the session is saved with the "
            "response; remove the call (a new session's session_key is None until then)"
        )

    def create(self) -> NoReturn:
        """Refused: a session is created by its first write.

        :raises SessionError: Always.
        """
        raise SessionError(
            "request.session.create() is not needed: a session is stored when the "
            "response starts, once something was written to it"
        )

    def delete(self, session_key: str | None = None) -> NoReturn:
        """Refused: end the request's session with :meth:`flush`.

        :raises SessionError: Always.
        """
        raise SessionError(
            "request.session.delete() is not offered: end this session with flush(); "
            "end another one with end_session() or end_user_sessions() of "
            "wsgisession.django.session_middleware()"
        )

    @classmethod
    def clear_expired(cls) -> NoReturn:
        """Refused: expired records are purged without it.

        :raises SessionError: Always.
        """
        raise SessionError(
            "clear_expired() is not offered: the middleware purges expired sessions in "
            "the background every 'cleanup_interval' seconds, and 'wsgisession cleanup' "
            "does it from the command line (manage.py clearsessions does not apply)"
        )


def _seconds(value: object) -> float:
    """The lifetime *value* stands for, in seconds from now, for ``set_expiry()``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, datetime):
        when: datetime = value
        if settings.USE_TZ and timezone.is_naive(when):
            when = timezone.make_aware(when)  # Django's reading of a naive datetime
        # A date computed a moment ago as "now + 30 days" must still count as 30 days.
        seconds = round(when.timestamp() - _clock.now())
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    else:
        raise TypeError(
            "set_expiry() takes seconds, a datetime, a timedelta or None, "
            f"got {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"set_expiry({value!r}): the lifetime must be in the future; "
            "end the session with flush()"
        )
    return seconds
