"""How long sessions and their keys live: the one expiry policy of a middleware."""

from __future__ import annotations

import math
from typing import Protocol

from ._option_kinds import MAX_SECONDS

__all__ = ["Expiry", "check_key_timeout", "key_live"]


def check_key_timeout(key: str, timeout: object) -> None:
    """Refuse a key *timeout* that isn't positive seconds up to ten years.

    :raises ValueError: It is not a finite number in that range.
    """
    # The range alone refuses NaN and infinity; math.isfinite() would turn a huge int
    # into a float first, and raise OverflowError.
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_SECONDS
    ):
        raise ValueError(
            f"timeout for session key {key!r} must be positive seconds, at most "
            f"{MAX_SECONDS} (ten years)"
        )


class _Lifetimes(Protocol):
    """The options of a :class:`~wsgisession.config.Config` that make its policy."""

    @property
    def timeout(self) -> int: ...
    @property
    def remember_me_timeout(self) -> int: ...
    @property
    def absolute_timeout(self) -> int | None: ...
    @property
    def cookie_max_age(self) -> int | None: ...
    @property
    def save_every_request(self) -> bool: ...
    @property
    def anonymous_timeout(self) -> int | None: ...


def key_live(deadline: float | None, now: float) -> bool:
    """Whether a key with *deadline* (``None``: none) is still there at *now*."""
    return deadline is None or deadline > now


class Expiry:
    """The lifetimes a middleware's options give its sessions, their keys and cookies.

    Every expiry decision goes through here, judged by times the caller reads from
    :func:`wsgisession._clock.now`: when a session used now expires, when a key set
    with a timeout vanishes, whether a session that was only read is due a refresh, and
    how long its cookie lives.
    """

    __slots__ = (
        "_absolute_timeout",
        "_anonymous_timeout",
        "_cookie_max_age",
        "_remember_me_timeout",
        "_save_every_request",
        "_timeout",
    )

    def __init__(
        self,
        *,
        timeout: int,
        remember_me_timeout: int,
        absolute_timeout: int | None,
        cookie_max_age: int | None,
        save_every_request: bool,
        anonymous_timeout: int | None = None,
    ) -> None:
        self._timeout = timeout
        self._anonymous_timeout = anonymous_timeout
        self._remember_me_timeout = remember_me_timeout
        self._absolute_timeout = absolute_timeout
        self._cookie_max_age = cookie_max_age
        self._save_every_request = save_every_request

    @classmethod
    def of(cls, config: _Lifetimes) -> Expiry:
        """The policy the options of *config* (a :class:`~wsgisession.config.Config`) set."""
        return cls(
            timeout=config.timeout,
            remember_me_timeout=config.remember_me_timeout,
            absolute_timeout=config.absolute_timeout,
            cookie_max_age=config.cookie_max_age,
            save_every_request=config.save_every_request,
            anonymous_timeout=config.anonymous_timeout,
        )

    def lifetime(self, remember: bool, anonymous: bool) -> int:
        """The idle lifetime of a session in seconds: remembered, else without a user
        (``anonymous_timeout``, where set), else ``timeout``."""
        if remember:
            return self._remember_me_timeout
        if anonymous and self._anonymous_timeout is not None:
            return self._anonymous_timeout
        return self._timeout

    def expires_at(
        self, created_at: float, now: float, *, remember: bool, anonymous: bool
    ) -> float:
        """When a session created at *created_at* and used at *now* expires.

        *anonymous*: the session has no user. ``absolute_timeout`` caps it, whatever
        the session's activity.
        """
        expires_at = now + self.lifetime(remember, anonymous)
        if self._absolute_timeout is not None:
            expires_at = min(expires_at, created_at + self._absolute_timeout)
        return expires_at

    def over(self, created_at: float, now: float) -> bool:
        """Whether ``absolute_timeout`` has ended a session created at *created_at*."""
        absolute = self._absolute_timeout
        return absolute is not None and created_at + absolute <= now

    def key_deadline(
        self, timeout: float, created_at: float, now: float, *, remember: bool, anonymous: bool
    ) -> float:
        """When a key set at *now* with *timeout* vanishes.

        A key can't outlive its session, as the session's lifetime stands when the key
        is set.
        """
        session_ends = self.expires_at(created_at, now, remember=remember, anonymous=anonymous)
        return min(now + timeout, session_ends)

    def refresh_due(
        self, expires_at: float, now: float, *, remember: bool, anonymous: bool
    ) -> bool:
        """Whether a session that was only read should have its expiry extended.

        It is, once less than half its lifetime is left, or on every request with
        ``save_every_request``.
        """
        if self._save_every_request:
            return True
        return expires_at - now < self.lifetime(remember, anonymous) / 2

    def persistent(self, remember: bool) -> bool:
        """Whether the session's cookie outlives the browser."""
        return remember or self._cookie_max_age is not None

    def cookie_max_age(self, expires_at: float, now: float, *, remember: bool) -> int | None:
        """The ``Max-Age`` of the session's cookie; ``None`` for a browser-lifetime one.

        A remembered session's cookie lives exactly as long as the session has left, so
        it never outlives it.
        """
        if remember:
            return max(0, math.ceil(expires_at - now))
        return self._cookie_max_age
