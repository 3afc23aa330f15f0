"""The dict-like session a handler finds in the environ."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final

from . import _clock
from ._kinds import MAX_SECONDS
from .errors import SessionError
from .ids import new_session_id, store_key
from .users import check_user_id

if TYPE_CHECKING:
    from wsgiref.types import WSGIEnvironment

    from ._engine import Engine
    from ._record import Snapshot
    from .cookies import CookieId

__all__ = ["Session"]

log = logging.getLogger("wsgisession")

# Where a session's response is (Session._stage). Changes made once the response is
# finished could never be saved, so they raise rather than vanish.
OPEN: Final = 0
HEADERS_SENT: Final = 1
FINISHED: Final = 2


class Session(MutableMapping[str, Any]):
    """The session of one request: a mutable mapping of ``str`` keys.

    Nothing is read from the store until a handler first touches the session, and
    the middleware, not the handler, saves it when the response starts. Only the
    keys this request changed or deleted are written, on top of what the store holds
    then, so concurrent requests that change different keys keep each other's work.

    A key set with :meth:`set` and a ``timeout`` disappears that many seconds later:
    it raises :exc:`KeyError` and is absent from ``in``, ``len`` and iteration.
    """

    __slots__ = (
        "_changed",
        "_cookie",
        "_created_at",
        "_data",
        "_deadlines",
        "_deleted",
        "_engine",
        "_environ",
        "_expired",
        "_expires_at",
        "_failed",
        "_force",
        "_foreign",
        "_id",
        "_invalidated",
        "_loaded",
        "_moved",
        "_new",
        "_remember",
        "_remember_changed",
        "_snapshot",
        "_stage",
        "_stale_key",
        "_stored_id",
        "_user_changed",
        "_user_id",
    )

    def __init__(self, engine: Engine, environ: WSGIEnvironment) -> None:
        self._engine = engine
        self._environ = environ
        self._loaded = False
        self._stage = OPEN
        self._failed = False

    # -- loading -------------------------------------------------------------------

    def _load(self) -> None:
        """Read the cookie and the stored record: the session's first touch."""
        self._loaded = True
        if self._stage:
            # The response can no longer say Vary: Cookie, so a shared cache might hand
            # what this body shows to another user.
            log.warning(
                "session first used after the response headers were sent: the response "
                "has no Vary: Cookie; read the session before start_response"
            )
        engine = self._engine
        now = _clock.now()
        self._cookie: CookieId | None = engine.read_cookie(self._environ)
        self._expired = False
        self._foreign = False
        self._moved = False
        self._invalidated = False
        # A corrupt record is deleted when this request stores its fresh session.
        self._stale_key: str | None = None
        self._changed: set[str] = set()
        self._deleted: set[str] = set()
        self._force = False
        self._remember_changed = False
        self._user_changed = False
        snapshot = None
        if self._cookie is not None:
            key = store_key(self._cookie.session_id)
            try:
                snapshot, miss = engine.load(key, self._environ, now)
            except BaseException:
                # Left unloaded, the next touch asks the store again (and fails loudly
                # while it is down), and the response does not save a half-made session.
                self._loaded = False
                raise
            if snapshot is None:
                self._expired = True
                # bind_ip: the session lives on for its own address, so its cookie stays.
                self._foreign = miss == "foreign"
                # Regenerated a moment ago: the browser may hold the new cookie already.
                self._moved = miss == "moved"
                if miss == "corrupt":
                    self._stale_key = key
        if snapshot is None:
            self._start_fresh(now, engine.initial_data())
        else:
            assert self._cookie is not None
            self._use_snapshot(self._cookie.session_id, snapshot)
            self._new = False

    def _start_fresh(self, now: float, data: dict[str, Any]) -> None:
        self._new = True
        self._id: str | None = None
        self._snapshot: Snapshot | None = None
        self._data = data
        self._deadlines: dict[str, float] = {}
        self._created_at = now
        self._remember = False
        self._user_id: str | None = None
        self._expires_at = self._engine.expiry(now, now, remember=False)

    def _use_snapshot(self, session_id: str, snapshot: Snapshot) -> None:
        """Make *snapshot*, just loaded or saved under *session_id*, the session's base."""
        self._id = self._stored_id = session_id
        self._snapshot = snapshot
        self._data = dict(snapshot.data)
        self._deadlines = dict(snapshot.deadlines)
        self._created_at = snapshot.record.created_at
        self._expires_at = snapshot.record.expires_at
        self._remember = snapshot.remember
        self._user_id = snapshot.record.user_id
        self._forget_changes()

    def _forget_changes(self) -> None:
        """Start tracking changes afresh: the session now matches what is stored, or nothing."""
        self._changed.clear()
        self._deleted.clear()
        self._force = self._remember_changed = self._user_changed = False
        self._stale_key = None

    def _ensure(self) -> None:
        if not self._loaded:
            self._load()

    # -- the mapping -----------------------------------------------------------------

    def _live(self, key: str) -> bool:
        if key not in self._data:
            return False
        deadline = self._deadlines.get(key)
        return deadline is None or deadline > _clock.now()

    def __getitem__(self, key: str) -> Any:
        if not self._loaded:
            self._load()
        if self._deadlines and not self._live(key):
            raise KeyError(key)
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def set(self, key: str, value: Any, timeout: float | None = None) -> None:
        """Store *value* under *key*; with *timeout* (seconds), it vanishes that long after.

        The key can't outlive the session itself. A later assignment without a
        timeout clears it.

        :raises SessionError: The session is new and the response headers are gone.
        """
        if not isinstance(key, str):
            raise TypeError(f"session keys must be str, got {type(key).__name__}")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or not 0 < timeout <= MAX_SECONDS
        ):
            raise ValueError(
                f"timeout for session key {key!r} must be positive seconds, at most "
                f"{MAX_SECONDS} (ten years)"
            )
        self._ensure()
        self._check_writable()
        self._data[key] = value
        if timeout is None:
            self._deadlines.pop(key, None)
        else:
            now = _clock.now()
            # Capped by the session's own lifetime, as it stands when the key is set.
            ceiling = self._engine.expiry(self._created_at, now, remember=self._remember)
            self._deadlines[key] = min(now + timeout, ceiling)
        self._changed.add(key)
        self._deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        self._ensure()
        self._check_open()
        if not self._live(key):
            raise KeyError(key)
        del self._data[key]
        self._deadlines.pop(key, None)
        self._deleted.add(key)
        self._changed.discard(key)

    def __iter__(self) -> Iterator[str]:
        self._ensure()
        if not self._deadlines:
            return iter(list(self._data))
        return iter([key for key in self._data if self._live(key)])

    def __len__(self) -> int:
        self._ensure()
        if not self._deadlines:
            return len(self._data)
        return sum(1 for key in self._data if self._live(key))

    def __contains__(self, key: object) -> bool:
        self._ensure()
        return isinstance(key, str) and self._live(key)

    def __repr__(self) -> str:
        if not self._loaded:
            return "<Session (not loaded)>"
        return f"<Session {'new' if self._new else 'stored'} keys={sorted(self)!r}>"

    def _check_open(self) -> None:
        if self._stage == FINISHED:
            raise SessionError(
                "the response is finished: this change to the session could no longer "
                "be saved; make it before the response ends"
            )

    def _check_writable(self) -> None:
        self._check_open()
        if self._stage and self._snapshot is None:
            raise SessionError(
                "can't start a session after the response headers were sent: "
                "its cookie could no longer be set; write to it before start_response"
            )

    # -- state ------------------------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The session id, or ``None`` for a new session that has not been saved."""
        self._ensure()
        return self._id

    @property
    def handle(self) -> str | None:
        """The handle :meth:`SessionMiddleware.user_sessions` lists this session under.

        ``None`` until the session is stored. It changes with :meth:`regenerate` once
        the response is saved.
        """
        self._ensure()
        return None if self._snapshot is None else self._snapshot.key

    def _handles(self) -> list[str]:
        """Every handle this session is or will be stored under in this request."""
        self._ensure()
        handles = []
        if self._loaded and self._snapshot is not None:
            handles.append(self._snapshot.key)
        if self._loaded and self._id is not None:
            handles.append(store_key(self._id))
        return handles

    @property
    def new(self) -> bool:
        """``True`` when this request started the session."""
        self._ensure()
        return self._new

    @property
    def expired(self) -> bool:
        """``True`` when a validly signed cookie named a session that expired or is gone."""
        self._ensure()
        return self._expired

    @property
    def accessed(self) -> bool:
        """``True`` once the handler read or wrote anything."""
        return self._loaded

    @property
    def modified(self) -> bool:
        """``True`` once data changed; assign ``True`` to save nested in-place changes.

        A forced save still merges by key: only keys whose value differs from what
        was loaded are written. Assigning ``False`` withdraws only the forcing.
        """
        if not self._loaded:
            return False
        return bool(
            self._changed
            or self._deleted
            or self._force
            or self._remember_changed
            or self._user_changed
            or self._moving
        )

    @modified.setter
    def modified(self, value: bool) -> None:
        self._ensure()
        self._check_open()
        self._force = bool(value)

    @property
    def _moving(self) -> bool:
        """Whether :meth:`regenerate` gave a stored session an id it isn't stored under."""
        # The id the snapshot is stored under is kept, so this costs no hashing.
        return self._snapshot is not None and self._id is not None and self._id != self._stored_id

    @property
    def remember(self) -> bool:
        """Whether the cookie persists for ``remember_me_timeout`` (remember-me)."""
        self._ensure()
        return self._remember

    @remember.setter
    def remember(self, value: bool) -> None:
        self._ensure()
        value = bool(value)
        if value == self._remember:
            return
        if self._stage:
            raise SessionError(
                "can't change 'remember' after the response headers were sent: "
                "the cookie's lifetime could no longer change"
            )
        self._remember = value
        self._remember_changed = True
        now = _clock.now()
        self._expires_at = self._engine.expiry(self._created_at, now, remember=value)

    @property
    def user_id(self) -> str | None:
        """The user this session belongs to, or ``None``; setting it is a change."""
        self._ensure()
        return self._user_id

    @user_id.setter
    def user_id(self, value: str | None) -> None:
        if value is not None:
            check_user_id(value)
        self._ensure()
        if value == self._user_id:
            return
        if value is None:
            self._check_open()
        else:
            self._check_writable()
        self._user_id = value
        self._user_changed = True

    @property
    def created_at(self) -> float:
        """When the session started, as a Unix timestamp."""
        self._ensure()
        return self._created_at

    @property
    def expires_at(self) -> float:
        """When the session ends unless it is used again, as a Unix timestamp."""
        self._ensure()
        return self._expires_at

    def max_age(self, now: float) -> int:
        """Seconds the cookie of a remembered session should live, from *now*."""
        return max(0, math.ceil(self._expires_at - now))

    # -- lifecycle ----------------------------------------------------------------------

    def regenerate(self) -> None:
        """Give the session a new id, keeping its data and ``created_at``.

        The new record is written and the old one deleted when the response is saved;
        neither happens if the request fails. Call it on login, against session
        fixation.

        :raises SessionError: The response headers were already sent.
        """
        self._ensure()
        if self._stage:
            raise SessionError("can't regenerate the session id after the headers were sent")
        if self._snapshot is not None:
            self._id = new_session_id()

    def invalidate(self) -> None:
        """End the session now: delete its record, empty it, and expire its cookie.

        The deletion is done at once and holds even if the request then fails.
        Writing to the session afterwards starts a fresh one with a new id.

        :raises StoreError: The store could not delete the record.
        """
        self._ensure()
        if self._snapshot is not None:
            self._engine.delete(self._snapshot.key)
        if self._stale_key is not None:
            self._engine.delete(self._stale_key)
        self._start_fresh(_clock.now(), {})
        self._forget_changes()
        self._invalidated = True
