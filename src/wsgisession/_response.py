"""Saving a session with its response: the state a session keeps, and what the middleware calls.

:class:`SessionState` holds every piece of a request's session state and saves it as the
response starts and closes; :class:`~wsgisession.session.Session` adds the mapping and the
members handlers use. The split keeps each module to one idea: what a handler does, and
what the response does with it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from . import _clock
from ._changes import Step
from ._expiry import key_live
from ._saving import Absence, Change, Saver, Stored

if TYPE_CHECKING:
    from wsgiref.types import WSGIEnvironment

    from ._snapshot import Snapshot
    from .cookies import CookieId, SessionCookie

__all__ = ["FINISHED", "HEADERS_SENT", "OPEN", "SessionState"]

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
OPEN: Final = _Stage.OPEN
HEADERS_SENT: Final = _Stage.HEADERS_SENT
FINISHED: Final = _Stage.FINISHED


class SessionState:
    """A request's session state, and its saving as the response starts and closes.

    Only :class:`~wsgisession.session.Session` derives from it; nothing else reads it.
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
        "_read",
        "_remember",
        "_remember_changed",
        "_saver",
        "_snapshot",
        "_stage",
        "_stale_key",
        "_steps",
        "_stored_id",
        "_user_changed",
        "_user_id",
    )

    # Set on the session's first touch (see Session._load), and kept by this class.
    _cookie: CookieId | None
    _id: str | None
    _stored_id: str
    _snapshot: Snapshot | None
    _data: dict[str, Any]
    _deadlines: dict[str, float]
    _created_at: float
    _expires_at: float
    _remember: bool
    _user_id: str | None
    _new: bool
    _expired: bool
    _foreign: bool
    _moved: bool
    _invalidated: bool
    #: A corrupt record the cookie named, deleted when this request stores a fresh session.
    _stale_key: str | None
    #: Keys written whole, and keys deleted.
    _changed: set[str]
    _deleted: set[str]
    #: apply() operations on keys not written whole, in the order they were made.
    _steps: list[Step]
    #: Keys read that hold a container, which the handler may have changed in place.
    _read: set[str]
    _force: bool
    _remember_changed: bool
    _user_changed: bool

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
        self._stage = OPEN
        self._failed = False

    # -- the state's base ---------------------------------------------------------------

    def _start_fresh(self, now: float, data: dict[str, Any]) -> None:
        self._new = True
        self._id = None
        self._snapshot = None
        self._data = data
        self._deadlines = {}
        self._created_at = now
        self._remember = False
        self._user_id = None
        self._expires_at = self._saver.expiry.expires_at(now, now, remember=False, anonymous=True)

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
        self._steps.clear()
        self._read.clear()
        self._force = self._remember_changed = self._user_changed = False
        self._stale_key = None

    def _live(self, key: str) -> bool:
        if key not in self._data:
            return False
        deadline = self._deadlines.get(key)
        return deadline is None or key_live(deadline, _clock.now())

    @property
    def _moving(self) -> bool:
        """Whether :meth:`regenerate` gave a stored session an id it isn't stored under."""
        # The id the snapshot is stored under is kept, so this costs no hashing.
        return self._snapshot is not None and self._id is not None and self._id != self._stored_id

    def _has_changes(self) -> bool:
        """Whether this request changed anything a save would write (see ``modified``)."""
        return bool(
            self._changed
            or self._deleted
            or self._steps
            or self._force
            or self._remember_changed
            or self._user_changed
            or self._moving
        )

    def _find_in_place_changes(self) -> None:
        """Count as written whole the containers read and since changed in place.

        Only keys read that hold a container are compared, against a fresh decode of
        what was loaded, so requests that read nothing of the kind pay nothing.
        """
        snapshot = self._snapshot
        if snapshot is None or self._force:
            return  # a new session is stored whole; a forced save compares every key
        stepped = {step.key for step in self._steps}
        candidates = self._read - self._changed - self._deleted - stepped
        if candidates:
            self._changed |= self._saver.changed_in_place(snapshot, candidates, self._data)

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
            self._stage = HEADERS_SENT
            return None
        if status[:1] == "5":
            self._failed = True
        if self._stage is not OPEN:
            return []  # an error page after the first start_response: only Vary
        self._stage = HEADERS_SENT
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
            if self._loaded and self._stage is HEADERS_SENT and not self._failed:
                self._save_late(_clock.now())
        finally:
            self._stage = FINISHED

    def hand_over(self) -> None:
        """Mark the response finished without a late save: its body runs no code."""
        self._stage = FINISHED

    def _save_for_response(self, now: float) -> list[tuple[str, str]]:
        issue = False
        linking = self._user_changed and self._user_id is not None
        expiry = self._saver.expiry
        if not self._failed:
            if self._snapshot is None:
                # Initializer items alone are not a change, so they store nothing.
                worth_storing = self._has_changes() and (
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
                if self._read:
                    self._find_in_place_changes()
                if self._has_changes():
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
        if self._read:
            self._find_in_place_changes()
        if self._has_changes():
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
            tuple(self._steps),
        )
        outcome = self._saver.save(change, now)
        if isinstance(outcome, Stored):
            self._use_snapshot(outcome.session_id, outcome.snapshot)
            return True
        self._ended(outcome)
        return False

    def _save_now(self, step: Step) -> bool:
        """Save *step* alone at once, ahead of the response; ``False`` if the session ended.

        The rest of the request's changes wait for the response, merged onto what this
        save stored. An ended session is emptied: nothing of it is shown or saved again.
        """
        snapshot = self._snapshot
        assert snapshot is not None
        change = Change(
            snapshot,
            self._stored_id,
            {},
            {},
            frozenset(),
            frozenset(),
            False,
            None,
            None,
            False,
            self._created_at,
            self._saver.client(self._environ),
            False,
            None,
            (step,),
        )
        outcome = self._saver.save(change, _clock.now())
        if isinstance(outcome, Stored):
            self._snapshot = outcome.snapshot
            self._expires_at = outcome.snapshot.record.expires_at
            return True
        self._ended(outcome)
        self._start_fresh(_clock.now(), {})
        self._forget_changes()
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
