"""The dict-like session a handler finds in the environ."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final

from . import _clock
from ._changes import (
    FLASHES_KEY,
    AppendItem,
    Claim,
    Increment,
    Step,
    entry_ids,
    flash_entry,
    flash_pairs,
    is_entry,
)
from ._expiry import check_key_timeout
from ._handoff import Change, Stored
from ._response import FINISHED, OPEN, SessionState
from .errors import SessionError
from .ids import new_session_id, store_key
from .users import check_user_id

if TYPE_CHECKING:
    from ._handoff import Absence
    from ._snapshot import Snapshot

__all__ = ["Session"]

log = logging.getLogger("wsgisession")


# Values a handler can't change in place; reading any other kind of value marks its key
# for the comparison that finds in-place changes.
_IMMUTABLE: Final = frozenset({str, int, float, bool, type(None), bytes})


class Session(SessionState, MutableMapping[str, Any]):
    """The session of one request: a mutable mapping of ``str`` keys.

    Nothing is read from the store until a handler first touches the session, and
    the middleware, not the handler, saves it when the response starts. Only the
    keys this request changed or deleted are written, on top of what the store holds
    then, so concurrent requests that change different keys keep each other's work.

    A key set with :meth:`set` and a ``timeout`` disappears that many seconds later:
    it raises :exc:`KeyError` and is absent from ``in``, ``len`` and iteration.
    """

    __slots__ = ()

    # -- loading -------------------------------------------------------------------

    def _load(self) -> None:
        """Read the cookie and the stored record: the session's first touch."""
        self._loaded = True
        self._saver, self._cookies, self._initial = self._kit
        if self._stage is not OPEN:
            # The response can no longer say Vary: Cookie, so a shared cache might hand
            # what this body shows to another user.
            log.warning(
                "session first used after the response headers were sent: the response "
                "has no Vary: Cookie; read the session before start_response"
            )
        saver = self._saver
        saver.metrics.count("requests")
        now = _clock.now()
        environ = self._request()
        header = environ.get("HTTP_COOKIE")
        self._cookie = self._cookies.read(header) if header else None
        self._expired = False
        self._foreign = False
        self._moved = False
        self._invalidated = False
        # A corrupt record is deleted when this request stores its fresh session.
        self._stale_key = None
        self._changed = set()
        self._deleted = set()
        self._steps = []
        self._read = {}
        self._force = False
        self._remember_changed = False
        self._user_changed = False
        loaded: Snapshot | Absence | None = None
        if self._cookie is not None:
            key = store_key(self._cookie.session_id)
            try:
                loaded = saver.load(self._cookie.session_id, key, environ, now)
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
            try:
                items = self._initial_items()
            except BaseException:
                self._loaded = False  # as for a store that failed: nothing half-made is saved
                raise
            self._start_fresh(now, items)
        else:
            assert self._cookie is not None
            self._use_snapshot(self._cookie.session_id, loaded)
            self._new = False
            # Sealed under a fallback key: saved, it is sealed again under secret_key,
            # before the fallback goes.
            self._force = loaded.reseal

    def _note_read(self, key: str, value: Any) -> None:
        """Note that the handler got *value*, a container, from *key*: it may change
        it in place. A value as loaded is walked, for the save to find it unchanged."""
        snapshot = self._origin
        if snapshot is not None and snapshot.data.get(key) is value:
            self._read[key] = self._saver.walk(snapshot, value)
            return
        self._read[key] = None
        if snapshot is None and key not in self._changed:
            # An initializer item of a new session, as it is now: no handler has had it.
            self._pristine[key] = copy.deepcopy(value)

    def _save_now(self, step: Step) -> bool:
        """Save *step* alone at once, ahead of the response; ``False`` if the session ended.

        The rest of the request's changes wait for the response, merged onto what this
        save stored. An ended session is emptied: nothing of it is shown or saved again.
        """
        assert self._snapshot is not None
        # Merged onto values as stored, not the ones the request holds: those may have
        # been changed in place, which belongs to the response's save.
        change = Change(
            self._saver.untouched(self._snapshot),
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

    def _ensure(self) -> None:
        if not self._loaded:
            self._load()

    # -- the mapping -----------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if not self._loaded:
            self._load()
        if self._deadlines and not self._live(key):
            raise KeyError(key)
        value = self._data[key]
        if type(value) not in _IMMUTABLE and key not in self._read:
            self._note_read(key, value)
        return value

    def get(self, key: str, default: Any = None, /) -> Any:
        """Return the value of *key*, or *default* if it is missing or has timed out."""
        # Mapping's own get() goes through __getitem__ and, for a missing key, raises
        # and catches a KeyError: several times the cost of the lookup itself.
        if not self._loaded:
            self._load()
        data = self._data
        if key not in data or (self._deadlines and not self._live(key)):
            return default
        value = data[key]
        if type(value) not in _IMMUTABLE and key not in self._read:
            self._note_read(key, value)
        return value

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
        if not self._loaded:
            self._load()
        if self._stage is not OPEN:  # while OPEN, every write is allowed
            self._check_writable()
        self._data[key] = value
        if timeout is None:
            self._deadlines.pop(key, None)
        else:
            self._deadlines[key] = self._saver.expiry.key_deadline(
                timeout,
                self._created_at,
                _clock.now(),
                remember=self._remember,
                anonymous=self._user_id is None,
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

    # -- writes that compose ---------------------------------------------------------

    def apply(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        """Set *key* to ``fn(current)`` and return it; the save applies *fn* again.

        ``current`` is *default* when *key* is missing. When the response is saved,
        *fn* runs once more on the value the store holds then (and again on every retry
        of the save), so concurrent requests' ``apply`` calls on one key all take
        effect, in the order each request made them. *fn* must therefore be pure and
        quick. A later ``s[key] = v`` or ``del s[key]`` in the same request wins over
        it; an ``apply`` after such a write applies to the written value.

        :raises SessionError: The session is new and the response headers are gone.
        """
        value = self._step(key, fn, default)
        if type(value) not in _IMMUTABLE and key not in self._changed:
            # Handed to the handler, it may be changed in place after the step too.
            self._read[key] = None
        return value

    def _step(self, key: str, fn: Callable[[Any], Any], default: Any) -> Any:
        """:meth:`apply`, for a value the caller keeps to itself."""
        if not isinstance(key, str):
            raise TypeError(f"session keys must be str, got {type(key).__name__}")
        self._ensure()
        self._check_writable()
        live = self._live(key)
        value = fn(self._data[key] if live else default)
        if not live:
            self._deadlines.pop(key, None)
        self._data[key] = value
        if self._snapshot is None or key in self._changed or key in self._deleted:
            # Written whole already (a new session is stored whole): this shapes that value.
            self._changed.add(key)
            self._deleted.discard(key)
        else:
            self._steps.append(Step(key, fn, default))
        return value

    def incr(self, key: str, n: Any = 1) -> Any:
        """Add *n* to the number under *key* (0 when missing) and return the sum.

        Concurrent requests' increments all count (see :meth:`apply`).
        """
        return self.apply(key, Increment(n), 0)

    def append(self, key: str, item: Any) -> list[Any]:
        """Append *item* to the list under *key* (started when missing); return the list.

        Concurrent requests' appends are all kept (see :meth:`apply`).

        :raises TypeError: *key* holds something other than a list.
        """
        result: list[Any] = self.apply(key, AppendItem(item), [])
        return result

    def flash(self, message: Any, category: str = "message") -> None:
        """Queue *message* for a later request to show with :meth:`pop_flashes`."""
        if not isinstance(category, str):
            raise TypeError(f"a flash category must be str, got {type(category).__name__}")
        # The queue is never handed out, so no in-place change of it is looked for: the
        # comparison would be against the queue as loaded, which pop_flashes() changes.
        self._step(FLASHES_KEY, AppendItem(flash_entry(message, category)), [])

    def peek_flashes(self, category: str | None = None) -> list[tuple[str, Any]]:
        """The queued flash messages as ``(category, message)``, oldest first, left queued.

        With *category*, only its messages.
        """
        self._ensure()
        entries = self._data.get(FLASHES_KEY) if self._live(FLASHES_KEY) else None
        if not isinstance(entries, list):
            return []
        return [pair for pair in flash_pairs(entries) if category in (None, pair[0])]

    def pop_flashes(self, category: str | None = None) -> list[tuple[str, Any]]:
        """Return the queued flash messages as ``(category, message)``, oldest first.

        Exactly the messages returned are removed, so a message is shown once, even
        when parallel requests pop at the same moment: the messages a stored session
        held are taken from the store at once, and a message another request took
        first is not returned here. With *category*, only its messages are popped.

        :raises StoreError: The store could not be written.
        """
        self._ensure()
        entries = self._data.get(FLASHES_KEY) if self._live(FLASHES_KEY) else None
        if not isinstance(entries, list):
            return []
        wanted = [e for e in entries if is_entry(e) and category in (None, e[1])]
        if not wanted:
            return []
        self._check_open()
        ids = {e[0] for e in wanted}
        snapshot = self._snapshot
        shown = ids
        if snapshot is not None:
            stored = entry_ids(snapshot.data.get(FLASHES_KEY)) & ids
            own = ids - stored  # queued by this request, not stored yet
            if stored:
                claim = Claim(stored)
                if not self._save_now(Step(FLASHES_KEY, claim, [])):
                    return []
                shown = own | entry_ids(claim.taken)
            if own:
                # Cancels this request's own queued messages at the save, where they
                # would otherwise be appended.
                self._steps.append(Step(FLASHES_KEY, Claim(own), []))
        else:
            self._changed.add(FLASHES_KEY)
        left = [e for e in entries if e not in wanted]
        if left:
            self._data[FLASHES_KEY] = left
        else:
            del self._data[FLASHES_KEY]
            self._deadlines.pop(FLASHES_KEY, None)
            if FLASHES_KEY in self._changed:
                self._changed.discard(FLASHES_KEY)
                if snapshot is not None:
                    self._deleted.add(FLASHES_KEY)
        return flash_pairs(e for e in wanted if e[0] in shown)

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
        # Key names are session data (sealed in the store): a count, as error trackers
        # that record local variables show a repr.
        count = len(self)
        return (
            f"<Session {'new' if self._new else 'stored'}, {count} key{'' if count == 1 else 's'}>"
        )

    def _check_open(self) -> None:
        if self._stage is FINISHED:
            raise SessionError(
                "the response is finished: this change to the session could no longer "
                "be saved; make it before the response ends"
            )

    def _check_writable(self) -> None:
        self._check_open()
        if self._stage is not OPEN and self._snapshot is None:
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
        """``True`` once data changed; assign ``True`` to force a save.

        Values read and changed in place are found by the save without it, and are
        not counted here until then. A forced save still merges by key: only keys
        whose value differs from what was loaded are written. Assigning ``False``
        withdraws only the forcing.
        """
        return self._loaded and self._has_changes()

    @modified.setter
    def modified(self, value: bool) -> None:
        self._ensure()
        self._check_open()
        self._force = bool(value)

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
        if self._stage is not OPEN:
            raise SessionError(
                "can't change 'remember' after the response headers were sent: "
                "the cookie's lifetime could no longer change"
            )
        self._remember = value
        self._remember_changed = True
        self._expires_at = self._saver.expiry.expires_at(
            self._created_at, _clock.now(), remember=value, anonymous=self._user_id is None
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
        # With anonymous_timeout, linking or unlinking a user changes the lifetime.
        self._expires_at = self._saver.expiry.expires_at(
            self._created_at, _clock.now(), remember=self._remember, anonymous=value is None
        )

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
        if self._stage is not OPEN:
            raise SessionError("can't regenerate the session id after the headers were sent")
        if self._snapshot is not None:
            self._id = new_session_id()

    def invalidate(self) -> None:
        """End the session now: delete its record, empty it, and expire its cookie.

        The deletion is done at once and holds even if the request then fails.
        Writing to the session afterwards starts a fresh one with a new id.

        :raises StoreError: The store could not delete the record.
        :raises SessionError: The response is finished.
        """
        self._ensure()
        self._check_open()
        if self._snapshot is not None:
            self._saver.delete(self._snapshot.key)
        if self._stale_key is not None:
            self._saver.delete(self._stale_key)
        self._start_fresh(_clock.now(), {})
        self._forget_changes()
        self._invalidated = True
