"""The dict-like session a handler finds in the environ."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final

from . import _clock
from ._expiry import check_key_timeout, key_live
from ._saving import Absence, Change, Saver, Stored
from .errors import SessionError
from .ids import new_session_id, store_key
from .users import check_user_id

if TYPE_CHECKING:
    from wsgiref.types import WSGIEnvironment

    from ._snapshot import Snapshot
    from .cookies import CookieId, SessionCookie

__all__ = ["Session"]

log = logging.getLogger("wsgisession")


class _Stage(enum.Enum):
    """Where the response of a session's request is.

    ``OPEN``: anything may change, and the save decides the cookie. ``HEADERS_SENT``:
    changes to a stored session are saved when the response closes, but nothing that
    needs a new cookie may happen. ``FINISHED``: a change could no longer be saved, so
    it raises.
    """

    OPEN = "open"
    HEADERS_SENT = "headers sent"
    FINISHED = "finished"


# Read on every request: module constants spare the enum's attribute lookups (100 ns).
_OPEN: Final = _Stage.OPEN
_HEADERS_SENT: Final = _Stage.HEADERS_SENT
_FINISHED: Final = _Stage.FINISHED


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
        "_cookies",
        "_created_at",
        "_data",
        "_deadlines",
        "_deleted",
        "_environ",
        "_expired",
        "_expires_at",
        "_failed",
        "_force",
        "_foreign",
        "_id",
        "_initial",
        "_invalidated",
        "_loaded",
        "_moved",
        "_new",
        "_remember",
        "_remember_changed",
        "_saver",
        "_snapshot",
        "_stage",
        "_stale_key",
        "_stored_id",
        "_user_changed",
        "_user_id",
    )

    def __init__(
        self,
        saver: Saver,
        cookies: SessionCookie,
        initial: Callable[[], dict[str, Any]] | None,
        environ: WSGIEnvironment,
    ) -> None:
        self._saver = saver
        self._cookies = cookies
        self._initial = initial
        self._environ = environ
        self._loaded = False
        self._stage = _OPEN
        self._failed = False

    # -- loading -------------------------------------------------------------------

    def _load(self) -> None:
        """Read the cookie and the stored record: the session's first touch."""
        self._loaded = True
        if self._stage is not _OPEN:
            # The response can no longer say Vary: Cookie, so a shared cache might hand
            # what this body shows to another user.
            log.warning(
                "session first used after the response headers were sent: the response "
                "has no Vary: Cookie; read the session before start_response"
            )
        saver = self._saver
        saver.metrics.count("requests")
        now = _clock.now()
        header = self._environ.get("HTTP_COOKIE")
        self._cookie: CookieId | None = self._cookies.read(header) if header else None
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
        loaded: Snapshot | Absence | None = None
        if self._cookie is not None:
            key = store_key(self._cookie.session_id)
            try:
                loaded = saver.load(key, self._environ, now)
            except BaseException:
                # Left unloaded, the next touch asks the store again (and fails loudly
                # while it is down), and the response does not save a half-made session.
                self._loaded = False
                raise
            if isinstance(loaded, str):
                self._expired = True
                # bind_ip: the session lives on for its own address, so its cookie stays.
                self._foreign = loaded == "foreign"
                # Regenerated a moment ago: the browser may hold the new cookie already.
                self._moved = loaded == "moved"
                if loaded == "corrupt":
                    self._stale_key = key
        if loaded is None or isinstance(loaded, str):
            self._start_fresh(now, self._initial() if self._initial is not None else {})
        else:
            assert self._cookie is not None
            self._use_snapshot(self._cookie.session_id, loaded)
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
        self._expires_at = self._saver.expiry.expires_at(now, now, remember=False)

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
        return deadline is None or key_live(deadline, _clock.now())

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
        if timeout is not None:
            check_key_timeout(key, timeout)
        self._ensure()
        self._check_writable()
        self._data[key] = value
        if timeout is None:
            self._deadlines.pop(key, None)
        else:
            self._deadlines[key] = self._saver.expiry.key_deadline(
                timeout, self._created_at, _clock.now(), remember=self._remember
            )
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
        if self._stage is _FINISHED:
            raise SessionError(
                "the response is finished: this change to the session could no longer "
                "be saved; make it before the response ends"
            )

    def _check_writable(self) -> None:
        self._check_open()
        if self._stage is not _OPEN and self._snapshot is None:
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
        if self._stage is not _OPEN:
            raise SessionError(
                "can't change 'remember' after the response headers were sent: "
                "the cookie's lifetime could no longer change"
            )
        self._remember = value
        self._remember_changed = True
        self._expires_at = self._saver.expiry.expires_at(
            self._created_at, _clock.now(), remember=value
        )

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

    # -- lifecycle ----------------------------------------------------------------------

    def regenerate(self) -> None:
        """Give the session a new id, keeping its data and ``created_at``.

        The new record is written and the old one deleted when the response is saved;
        neither happens if the request fails. Call it on login, against session
        fixation.

        :raises SessionError: The response headers were already sent.
        """
        self._ensure()
        if self._stage is not _OPEN:
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
            self._saver.delete(self._snapshot.key)
        if self._stale_key is not None:
            self._saver.delete(self._stale_key)
        self._start_fresh(_clock.now(), {})
        self._forget_changes()
        self._invalidated = True

    # -- the response: called by the middleware, never by handlers ---------------------

    def fail(self) -> None:
        """Note that the request failed: nothing it changed will be saved.

        The middleware calls this when the application raises, its body fails, or the
        client goes away before the body ends. A logout already done stays done.
        """
        self._failed = True

    def respond(self, status: str) -> list[tuple[str, str]] | None:
        """Save the session as the response starts; return the headers it needs.

        The middleware calls this with the status the application gave, just before
        the headers go out. A 5xx status, like a failure noted before, saves nothing.
        ``None`` means the session was never touched and needs no header at all, not
        even ``Vary: Cookie``; otherwise the list holds the ``Set-Cookie`` to send, if
        any.
        """
        if not self._loaded:
            self._stage = _HEADERS_SENT
            return None
        if status[:1] == "5":
            self._failed = True
        if self._stage is not _OPEN:
            return []  # an error page after the first start_response: only Vary
        self._stage = _HEADERS_SENT
        return self._save_for_response(_clock.now())

    def close(self, *, completed: bool) -> None:
        """Save what changed while the body was produced, as the response closes.

        The middleware calls this once the server has closed the body; *completed* is
        ``False`` when the body failed or was abandoned. No header can be sent any more,
        so only what needs none happens: saving a stored session, refreshing one first
        read during the body, and ending a user's oldest sessions when this one was
        linked to them.
        """
        try:
            if not completed:
                self._failed = True
            if self._loaded and self._stage is _HEADERS_SENT and not self._failed:
                self._save_late(_clock.now())
        finally:
            self._stage = _FINISHED

    def hand_over(self) -> None:
        """Mark the response finished without a late save: its body runs no code."""
        self._stage = _FINISHED

    def _save_for_response(self, now: float) -> list[tuple[str, str]]:
        issue = False
        linking = self._user_changed and self._user_id is not None
        expiry = self._saver.expiry
        if not self._failed:
            if self._snapshot is None:
                # Initializer items alone are not a change, so they store nothing.
                worth_storing = self.modified and (
                    self._user_id is not None or any(self._live(k) for k in self._data)
                )
                if worth_storing and self._moved:
                    # Its cookie would replace the one the regenerate just gave the browser.
                    log.info(
                        "request with a just-regenerated session id; its changes were dropped"
                    )
                    self._saver.emit("conflict", None)
                elif worth_storing:
                    self._store(now)
                    issue = True
            else:
                moving = self._moving
                if self.modified:
                    remember_changed = self._remember_changed
                    saved = self._store(now)
                    issue = saved and (
                        moving or remember_changed or expiry.persistent(self._remember)
                    )
                elif self._refresh(now):
                    issue = expiry.persistent(self._remember)
                if self._snapshot is not None and self._cookie is not None:
                    issue = issue or self._cookie.stale_key
        if linking and self._snapshot is not None:
            self._enforce_cap(now)
        https = self._environ.get("wsgi.url_scheme") == "https"
        if issue and self._snapshot is not None and self._id is not None:
            max_age = expiry.cookie_max_age(self._expires_at, now, remember=self._remember)
            return [
                ("Set-Cookie", self._cookies.set_header(self._id, max_age=max_age, https=https))
            ]
        if (
            self._cookie is not None
            and not self._moved
            and (
                self._invalidated
                or (self._expired and self._snapshot is None and not self._foreign)
            )
        ):
            return [("Set-Cookie", self._cookies.expire_header(https=https))]
        return []

    def _save_late(self, now: float) -> None:
        if self._snapshot is None:
            return
        if self.modified:
            linking = self._user_changed and self._user_id is not None
            if self._store(now) and linking:
                self._enforce_cap(now)
        else:
            self._refresh(now)

    def _store(self, now: float) -> bool:
        """Hand this request's changes to the saver; ``False`` if the session ended."""
        snapshot = self._snapshot
        # Positional: a named tuple built from keywords costs twice as much.
        change = Change(
            snapshot,
            self._id,
            self._data,
            self._deadlines,
            self._changed,
            self._deleted,
            self._force,
            self._remember if self._remember_changed or snapshot is None else None,
            self._user_id,
            self._user_changed or snapshot is None,
            self._created_at,
            self._saver.client(self._environ),
            self._moving,
            self._stale_key,
        )
        outcome = self._saver.save(change, now)
        if isinstance(outcome, Stored):
            self._use_snapshot(outcome.session_id, outcome.snapshot)
            return True
        self._ended(outcome)
        return False

    def _refresh(self, now: float) -> bool:
        """Extend the session if it was only read and is due; ``True`` if it moved."""
        if self._snapshot is None:
            return False
        extended = self._saver.refresh(self._snapshot, self._expires_at, now)
        if extended is None:
            return False
        if isinstance(extended, str):
            self._ended(extended)
            return False
        self._expires_at = extended
        return True

    def _enforce_cap(self, now: float) -> None:
        assert self._snapshot is not None
        user_id = self._snapshot.record.user_id
        if user_id is not None:
            self._saver.enforce_cap(user_id, self._snapshot.key, now)

    def _ended(self, absence: Absence) -> None:
        """Another request ended the session: it is not written again.

        Its cookie is then expired, unless the session was regenerated ("moved"): the
        browser may already hold the new cookie, which an expiring one would delete.
        """
        self._snapshot = None
        self._expired = True
        self._moved = absence == "moved"
