"""Saving a session with its response: the state a session keeps, and what the middleware calls.

:class:`SessionState` holds every piece of a request's session state and saves it as the
response starts and closes; :class:`~wsgisession.session.Session` adds the mapping and the
members handlers use. The split keeps each module to one idea: what a handler does, and
what the response does with it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from . import _clock
from ._changes import Step
from ._expiry import key_live
from ._handoff import Absence, Change, Stored
from ._headers import with_session_headers
from ._saving import Saver
from .errors import SessionError, StoreError
from .ids import store_key

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from _typeshed import OptExcInfo

    from ._plain_json import Walk
    from ._snapshot import Snapshot
    from .cookies import CookieId, SessionCookie

    #: What every session of one middleware shares: its saver, its cookie codec, and
    #: what makes a new session's data.
    Kit = tuple[Saver, SessionCookie, Callable[[], dict[str, Any]] | None]

__all__ = ["FINISHED", "HEADERS_SENT", "OPEN", "SessionState"]

#: What a finished, loaded session keeps of its request: nothing.
_NO_REQUEST: Final[Mapping[str, Any]] = MappingProxyType({})

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
        "_kept",
        "_kit",
        "_loaded",
        "_moved",
        "_new",
        "_origin",
        "_pending",
        "_pristine",
        "_read",
        "_remember",
        "_remember_changed",
        "_saver",
        "_server_start_response",
        "_server_write",
        "_snapshot",
        "_stage",
        "_stale_key",
        "_steps",
        "_stored_id",
        "_user_changed",
        "_user_id",
    )

    # Set on the session's first touch (see Session._load), and kept by this class.
    _saver: Saver
    _cookies: SessionCookie
    _initial: Callable[[], dict[str, Any]] | None
    _cookie: CookieId | None
    _id: str | None
    _stored_id: str
    _snapshot: Snapshot | None
    #: The snapshot ``_data`` was copied from: changes made in place, and those a
    #: forced save writes, are found against it. ``_snapshot``, what the store last
    #: held, is what saves merge onto; the two differ after ``pop_flashes()`` saved
    #: ahead of the response, which must not take other requests' writes since for
    #: this one's.
    _origin: Snapshot | None
    _data: dict[str, Any]
    #: A new session's containers as first read (initializer items): copies, to find
    #: the ones changed in place.
    _pristine: dict[str, Any]
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
    #: Keys read that hold a container, which the handler may have changed in place,
    #: with what the value was made of when first read, if the saver can use it.
    _read: dict[str, Walk | None]
    _force: bool
    _remember_changed: bool
    _user_changed: bool

    # The response: the status and headers the application gave, not yet passed on,
    # and the server's write() once they were.
    _pending: tuple[str, list[tuple[str, str]]] | None
    _server_write: Callable[[bytes], object]
    #: The request's environ, read lazily (an inner middleware may change it first).
    _environ: Mapping[str, Any]
    #: What a session finished unread kept of its request: the cookie header and address.
    _kept: tuple[str | None, str | None]

    def __init__(self, kit: Kit, environ: WSGIEnvironment, start_response: StartResponse) -> None:
        # The state every request needs; the rest is set on first touch, or as the
        # response starts. A request that never touches its session pays for this
        # object alone, which is why it also holds the response's headers back, and
        # why the kit's parts are unpacked only on that touch.
        self._kit = kit
        self._environ = environ
        self._server_start_response = start_response
        self._pending = None
        self._loaded = False
        self._stage = OPEN
        self._failed = False

    # -- the state's base ---------------------------------------------------------------

    def _start_fresh(self, now: float, data: dict[str, Any]) -> None:
        self._new = True
        self._id = None
        self._snapshot = self._origin = None
        self._data = data
        self._pristine = {}
        self._deadlines = {}
        self._created_at = now
        self._remember = False
        self._user_id = None
        self._expires_at = self._saver.expiry.expires_at(now, now, remember=False, anonymous=True)

    def _initial_items(self) -> dict[str, Any]:
        if self._initial is None:
            return {}
        try:
            return self._initial()
        except AttributeError as exc:
            # The session is half-made while its initializer runs: using it fails on
            # state not there yet, which would say nothing useful.
            if exc.obj is not self:
                raise
            raise SessionError(
                "option 'initializer' used the session it is starting: return the new "
                "session's items as a mapping instead"
            ) from None

    def _use_snapshot(self, session_id: str, snapshot: Snapshot) -> None:
        """Make *snapshot*, just loaded or saved under *session_id*, the session's base.

        The changes tracked are left as they are: fresh ones on a load, and after a
        save the caller forgets them.
        """
        self._id = self._stored_id = session_id
        self._snapshot = self._origin = snapshot
        # Copies: the snapshot stays what is stored, the base of every later merge.
        self._data = dict(snapshot.data)
        self._deadlines = dict(snapshot.deadlines) if snapshot.deadlines else {}
        record = snapshot.record
        self._created_at = record.created_at
        self._expires_at = record.expires_at
        self._remember = snapshot.remember
        self._user_id = record.user_id

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
        snapshot = self._origin
        if snapshot is None:
            return  # a new session is stored whole
        stepped = {step.key for step in self._steps}
        read = self._read.keys() - self._changed - self._deleted
        # A forced save compares every key without steps itself.
        candidates = set() if self._force else read - stepped
        if candidates:
            found = self._saver.changed_in_place(snapshot, candidates, self._data, self._read)
            self._changed |= found
        past_steps = stepped & read
        if past_steps:
            # A value apply() made, or one it will make again, changed in place as well:
            # the steps alone would store something else. Written whole, it wins over
            # them, as an assignment after them would.
            self._changed |= self._saver.changed_past_steps(
                snapshot, past_steps, self._data, self._steps, _clock.now()
            )

    # -- the response: called by the middleware, never by handlers ---------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        """The ``start_response`` the middleware gives the application; it only takes note.

        The status and headers are held back until :meth:`send_headers`, which saves
        the session first. An error page (*exc_info*) replaces whatever was held back
        and goes out at once, saving nothing; so does a call made while the body is
        produced, for the server to judge.
        """
        if exc_info is None or exc_info[0] is None:
            self._pending = (status, headers)
            if self._stage is HEADERS_SENT:
                # A second call once the headers are out: passed on at once, since no
                # body chunk would bring it out any more.
                self.send_headers()
            return self._write
        self._pending = None
        self._failed = True
        extra = self.respond(status)
        if extra is not None:
            headers = with_session_headers(headers, extra)
        self._server_write = self._server_start_response(status, headers, exc_info)
        return self._server_write

    def send_headers(self, last: bool = False) -> bool:
        """Save the session and pass the held-back status and headers on to the server.

        Return whether the headers are out: ``False`` while the application has not
        called ``start_response`` yet (a generator calls it during its first step).
        With *last*, a body that runs no code follows, so once the headers are out the
        response is finished too (see :meth:`hand_over`).

        :raises StoreError: The save failed; nothing went to the server.
        """
        pending = self._pending
        if pending is None:
            return self._stage is not OPEN
        self._pending = None
        status, headers = pending
        if self._loaded:
            extra = self.respond(status)
            if extra is not None:
                headers = with_session_headers(headers, extra)
            # Some start_response callables (web.py's test helper) take two arguments.
            self._server_write = self._server_start_response(status, headers)
            if last:
                self.hand_over()
            return True
        # Never touched: no header to add, and what respond() and hand_over() would do
        # done here, since a request that never touches its session pays for every call.
        self._stage = HEADERS_SENT
        self._server_write = self._server_start_response(status, headers)
        if last:
            self._stage = FINISHED
            environ = self._environ
            self._kept = (environ.get("HTTP_COOKIE"), environ.get("REMOTE_ADDR"))
            self._environ = _NO_REQUEST
        return True

    def _write(self, data: bytes) -> object:
        # The legacy write() callable sends headers, so the session is saved first.
        self.send_headers()
        return self._server_write(data)

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
        if not self._loaded:
            self.hand_over()  # nothing to save, failed or not
            return
        try:
            if not completed:
                self._failed = True
            if self._stage is HEADERS_SENT and not self._failed:
                self._save_late(_clock.now())
        finally:
            self.hand_over()

    @property
    def finished(self) -> bool:
        """Whether the response is over for the session: nothing more will be saved.

        A list body after the headers went out through ``write()`` leaves it
        unfinished: what the application changed after that call is saved as the
        response closes, as for any body after the headers.
        """
        return self._stage is FINISHED

    def hand_over(self) -> None:
        """Mark the response finished without a late save: its body runs no code.

        :meth:`close` ends with it too.
        """
        if self._stage is FINISHED:
            return  # what it kept of the request is already all it has
        self._stage = FINISHED
        # The environ holds the session, so holding the environ makes a reference cycle,
        # which only the garbage collector frees: on every request, a third of what an
        # untouched session costs. A finished session keeps just what a first read of
        # it, once over, takes from the request, as it is now (a loaded one reads
        # nothing more): in a tuple, as building a dict of the two cost more than the
        # rest of an untouched request. send_headers() does the same inline, for a list
        # body, the commonest untouched response.
        if not self._loaded:
            environ = self._environ
            self._kept = (environ.get("HTTP_COOKIE"), environ.get("REMOTE_ADDR"))
        self._environ = _NO_REQUEST

    def _request(self) -> Mapping[str, Any]:
        """The request's environ, or what the session kept of it once finished unread."""
        if self._stage is not FINISHED:
            return self._environ
        cookie, address = self._kept
        return {"HTTP_COOKIE": cookie, "REMOTE_ADDR": address}

    def _save_for_response(self, now: float) -> list[tuple[str, str]]:
        issue = False
        linking = self._user_changed and self._user_id is not None
        expiry = self._saver.expiry
        if not self._failed:
            if self._snapshot is None:
                if self._pristine:
                    # Initializer items read and changed in place, found against a copy.
                    self._changed |= self._saver.stored_differently(
                        self._pristine.keys(), self._data, self._pristine
                    )
                # Initializer items are not a change, nor what they hold data: a visitor
                # with only those stores nothing, whatever else (remember) changed.
                worth_storing = self._has_changes() and (
                    self._user_id is not None
                    or any(self._live(k) for k in self._changed)
                    or any(self._live(step.key) for step in self._steps)
                )
                if worth_storing and self._moved:
                    # Its cookie would replace the one the regenerate just gave the browser.
                    log.info(
                        "request with a just-regenerated session id; its changes were dropped"
                    )
                    cookie = self._cookie
                    # The regenerated session's: its old id, the one this request holds.
                    moved = None if cookie is None else store_key(cookie.session_id)
                    self._saver.emit("conflict", moved)
                elif worth_storing:
                    if self._invalidated:
                        # Stored, it is the next request's session: with its defaults.
                        self._data = {**self._initial_items(), **self._data}
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
                elif self._snapshot is not self._origin:
                    # pop_flashes() saved ahead of the response, restarting the lifetime
                    # a persistent cookie has to say.
                    issue = expiry.persistent(self._remember)
                if self._snapshot is not None and self._cookie is not None:
                    issue = issue or self._cookie.stale_key
        if linking and not self._failed and self._snapshot is not None:
            self._enforce_cap(now)
        if issue and self._snapshot is not None and self._id is not None:
            max_age = expiry.cookie_max_age(self._expires_at, now, remember=self._remember)
            header = self._cookies.set_header(self._id, max_age=max_age, https=self._https())
            return [("Set-Cookie", header)]
        if (
            self._cookie is not None
            and not self._moved
            and (
                self._invalidated
                or (self._expired and self._snapshot is None and not self._foreign)
            )
        ):
            return [("Set-Cookie", self._cookies.expire_header(https=self._https()))]
        return []

    def _https(self) -> bool:
        return self._environ.get("wsgi.url_scheme") == "https"

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
            self._origin,
        )
        outcome = self._saver.save(change, now)
        if isinstance(outcome, Stored):
            self._use_snapshot(outcome.session_id, outcome.snapshot)
            self._forget_changes()
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
        if user_id is None:
            return
        try:
            self._saver.enforce_cap(user_id, self._snapshot.key, now)
        except StoreError as exc:
            # The session is saved: failing the request now would drop its cookie. The
            # cap holds again at the user's next login.
            log.warning("max_sessions_per_user not applied to this login: %s", exc)

    def _ended(self, absence: Absence) -> None:
        """Another request ended the session: it is not written again.

        Its cookie is then expired, unless the session was regenerated ("moved"): the
        browser may already hold the new cookie, which an expiring one would delete.
        """
        self._snapshot = self._origin = None
        self._expired = True
        self._moved = absence == "moved"
