"""A framework's face on the request's session: the mapping and our own members, forwarded."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from .session import Session

__all__ = ["SessionView"]


class SessionView(MutableMapping[str, Any], abc.ABC):
    """Forwards the mapping and wsgisession's members to a :class:`Session`.

    A framework helper subclasses it, says in :meth:`_session` which session it shows,
    and adds the names its framework expects. Everything else is the session's own,
    so each framework's face behaves exactly like the session behind it.
    """

    __slots__ = ()

    @abc.abstractmethod
    def _session(self) -> Session:
        """The session this view shows."""

    def __getitem__(self, key: str) -> Any:
        return self._session()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._session()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._session()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._session())

    def __len__(self) -> int:
        return len(self._session())

    def __contains__(self, key: object) -> bool:
        return key in self._session()

    @property
    def new(self) -> bool:
        """``True`` when this request started the session."""
        return self._session().new

    def set(self, key: str, value: Any, timeout: float | None = None) -> None:
        """Store *value*; with *timeout* (seconds), *key* vanishes that long after."""
        self._session().set(key, value, timeout=timeout)

    def apply(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        """Set *key* to ``fn(current)``; the save applies *fn* again (see Session.apply)."""
        return self._session().apply(key, fn, default)

    def incr(self, key: str, n: Any = 1) -> Any:
        """Add *n* to the number under *key*; concurrent increments all count."""
        return self._session().incr(key, n)

    def append(self, key: str, item: Any) -> list[Any]:
        """Append *item* to the list under *key*; concurrent appends are all kept."""
        return self._session().append(key, item)

    def regenerate(self) -> None:
        """Give the session a new id, keeping its data (call it on login)."""
        self._session().regenerate()

    def invalidate(self) -> None:
        """End the session: delete its record and expire its cookie."""
        self._session().invalidate()

    @property
    def remember(self) -> bool:
        """Whether the cookie persists for ``remember_me_timeout`` (remember-me)."""
        return self._session().remember

    @remember.setter
    def remember(self, value: bool) -> None:
        self._session().remember = value

    @property
    def user_id(self) -> str | None:
        """The user this session belongs to, or ``None``."""
        return self._session().user_id

    @user_id.setter
    def user_id(self, value: str | None) -> None:
        self._session().user_id = value
