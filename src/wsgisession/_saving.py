"""Loading and saving sessions: everything between a request's changes and the store.

The session hands :class:`Saver` an immutable :class:`Change` and gets back what was
stored (:class:`Stored`) or why nothing was (a :data:`Absence`). Nothing here reads or
writes a session; that keeps one owner per piece of state, and the path of a save
reading top to bottom: middleware, session, saver, store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from types import MappingProxyType
from typing import Any, Final, TypeVar

from . import _clock
from ._changes import FLASHES_KEY, Step, replay
from ._codec import Codec
from ._expiry import Expiry, key_live
from ._handoff import Absence, Change, Client, Stored
from ._plain_json import Walk
from ._sealing import Sealer
from ._snapshot import PLAIN_META, Snapshot, merge
from .config import Config
from .errors import StoreError
from .events import EventName, Metrics, SessionEvent, notify
from .ids import new_session_id, store_key
from .serializers import Serializer
from .stores.base import CorruptRecord, LockTimeout, Record, Store
from .users import list_user_sessions

__all__ = ["Saver"]

log = logging.getLogger("wsgisession")

_T = TypeVar("_T")

#: The client of a request when neither ``bind_ip`` nor ``track_clients`` is on.
_NOBODY: Final = Client(None, None, None)
#: No walks: every value is compared by its encoding alone.
_NO_WALKS: Final[Mapping[str, Walk | None]] = MappingProxyType({})


class Saver:
    """Loads, merges and saves the sessions of one middleware, and counts what happens.

    :param config: The middleware's options.
    :param store: Where the records live.
    :param serializer: Turns a session's data into bytes and back.
    """

    def __init__(self, config: Config, store: Store, serializer: Serializer) -> None:
        self.store = store
        self.expiry = Expiry.of(config)
        self.metrics = Metrics()
        sealer = Sealer(config.secret_key, config.secret_key_fallbacks)
        self._codec = Codec(serializer, config.encrypt, config.max_size, sealer)
        self._listeners = config.listeners
        self._bind_ip = config.bind_ip
        self._track_clients = config.track_clients
        self._save_timeout = config.save_timeout
        self._absolute_timeout = config.absolute_timeout
        self._regenerate_grace = config.regenerate_grace
        self._max_sessions_per_user = config.max_sessions_per_user

    # -- instrumentation -------------------------------------------------------------

    def emit(self, name: EventName, handle: str | None) -> None:
        """Tell the listeners, if any, that *name* happened to the session *handle*."""
        if self._listeners:
            notify(self._listeners, SessionEvent(name, handle, _clock.now()))

    def timed(
        self, handle: str | None, operation: Callable[..., _T], *args: Any, **kwargs: Any
    ) -> _T:
        """Run the store *operation*, timing it and reporting a :exc:`StoreError`.

        *handle* names the session the operation concerns, for the ``store_error`` event.
        """
        start = time.perf_counter()
        try:
            return operation(*args, **kwargs)
        except StoreError:
            self.metrics.count("store_errors")
            self.emit("store_error", handle)
            raise
        finally:
            self.metrics.observe(time.perf_counter() - start)

    # -- what a request starts with ----------------------------------------------------

    def client(self, environ: Mapping[str, Any]) -> Client:
        """The details of the request's client that a record keeps, per the options."""
        if not (self._bind_ip or self._track_clients):
            return _NOBODY
        address = environ.get("REMOTE_ADDR")
        if not isinstance(address, str):
            address = None
        agent = environ.get("HTTP_USER_AGENT") if self._track_clients else None
        return Client(
            address if self._bind_ip else None,
            agent if isinstance(agent, str) else None,
            address if self._track_clients else None,
        )

    def load(
        self, session_id: str, key: str, environ: Mapping[str, Any], now: float
    ) -> Snapshot | Absence:
        """Return the live session *session_id*, stored under *key*, or why there is none.

        :param environ: The request's environ, whose ``REMOTE_ADDR`` a ``bind_ip``
            session must match.
        """
        try:
            record = self._read(key)
        except CorruptRecord as exc:
            self._corrupt(key, exc)
            return "corrupt"
        if record is None or record.expires_at <= now:
            return self._expired(key, "gone")
        if record.version == 0:
            return self._expired(key, "moved")
        snapshot = self._decode(session_id, key, record)
        if snapshot is None:
            return "corrupt"
        if self.expiry.over(record.created_at, now):
            return self._expired(key, "gone")
        if self._bind_ip and snapshot.ip != environ.get("REMOTE_ADDR"):
            log.info("session %s presented from another address; treated as expired", key[:8])
            return self._expired(key, "foreign")
        return snapshot

    # -- saving ------------------------------------------------------------------------

    def save(self, change: Change, now: float) -> Stored | Absence:
        """Write *change* on top of what the store holds; return what was stored.

        A new session is created under a fresh id. A stored one is merged onto the
        record it loaded and written by compare-and-set, which costs nothing extra when
        nobody else writes the session. If another save got there first, it takes the
        session's save lock (:meth:`Store.save_locked`), under which it merges onto
        what is stored and writes, and cannot lose again, waiting its turn behind the
        saves that asked first for at most ``save_timeout`` seconds. Retrying the
        compare-and-set instead only pays off with little contention, where the lock
        costs no more; under heavy contention the losers' retries slow the winner, and
        one request in a few then loses round after round.

        A session that a concurrent request deleted (a logout), regenerated or that
        expired meanwhile is not written again: a logout is never undone, and an ended
        session's data is never served again. Its changes are dropped and logged, and
        why it ended is returned.

        :raises StoreError: The store failed, or ``save_timeout`` ran out while
            concurrent saves held the session's lock.
        :raises SessionError: The session is larger than ``max_size``.
        """
        base = change.base
        if base is None:
            return self._create(change, now)
        moving = change.moving
        target = base.key
        if moving:
            assert change.session_id is not None
            target = store_key(change.session_id)
        tombstone = self._tombstone(now) if moving else None
        changed, deleted = self._keys(change, base)
        if moving:
            # Regenerating writes a new key, which no compare-and-set protects, and
            # deletes the old one. Reading the old record first keeps a concurrent
            # request's keys; the save names the version it merged onto, so a write or a
            # logout landing since makes it fail and fall back on the lock.
            reloaded = self._reload(base.session_id, base.key)
            if isinstance(reloaded, str):
                return reloaded
            base = reloaded
        record, snapshot = self._merged(change, base, changed, deleted, now, target)
        if self.timed(
            target,
            self.store.save,
            target,
            record,
            expected_version=None if moving else base.record.version,
            replaces=base.key if moving else None,
            replaces_version=base.record.version if moving else None,
            tombstone=tombstone,
        ):
            return self._saved(change, snapshot)
        if moving and self._landed(target, record):
            return self._saved(change, snapshot)
        self.metrics.count("conflicts")
        self.emit("conflict", base.key)
        attempt = None if moving else (record, snapshot)
        return self._save_locked(change, base, target, (changed, deleted), now, tombstone, attempt)

    def _save_locked(
        self,
        change: Change,
        loaded: Snapshot,
        target: str,
        keys: tuple[AbstractSet[str], AbstractSet[str]],
        now: float,
        tombstone: Record | None,
        attempt: tuple[Record, Snapshot] | None = None,
    ) -> Stored | Absence:
        """Save under the lock of the session *loaded* was, after losing a race.

        The record is written under *target*: its key itself, or the new key of a move.
        *attempt* is what the compare-and-set tried to write: found stored, it landed
        after all (its answer was lost, or a driver sent it again), and is not merged a
        second time, which would apply an ``incr()`` twice.
        """
        moving = change.moving
        session_id, key = loaded.session_id, loaded.key
        built: list[Snapshot] = []
        outcome: list[Absence] = []
        failure: list[BaseException] = []

        def build(current: Record) -> Record | None:
            built.clear()
            outcome.clear()
            if attempt is not None and Codec.same_write(current, attempt[0]):
                built.append(attempt[1])
                return None
            if current.version == 0:
                outcome.append("moved")
                return None
            base = self._decode(session_id, key, current)
            if base is None:
                outcome.append("corrupt")
                return None
            try:
                record, snapshot = self._merged(change, base, *keys, now, target)
            # Handed back untouched: a store may translate what escapes into StoreError.
            except BaseException as exc:
                failure.append(exc)
                return None
            built.append(snapshot)
            return record

        started = time.monotonic()
        self.metrics.count("locked_saves")
        try:
            written = self.timed(
                key,
                self.store.save_locked,
                key,
                build,
                # save_timeout counts from here: the compare-and-set before took a
                # round trip, and reading the clock on every save would cost more.
                timeout=self._save_timeout,
                moves_to=target if moving else None,
                tombstone=tombstone,
            )
        except LockTimeout as exc:
            raise StoreError(
                f"gave up saving the session after save_timeout ({self._save_timeout} s): "
                "concurrent saves of it held its lock all that time"
            ) from exc
        finally:
            self.metrics.count("lock_wait_seconds", time.monotonic() - started)
        if failure:
            raise failure[0]
        if attempt is not None and built and built[0] is attempt[1]:
            return self._saved(change, built[0])  # the compare-and-set's write, stored
        if written is None or not built:
            log.info(
                "session %s ended by another request; this request's changes dropped", key[:8]
            )
            return outcome[0] if outcome else "gone"
        return self._saved(change, built[0])

    def _keys(self, change: Change, base: Snapshot) -> tuple[AbstractSet[str], AbstractSet[str]]:
        """The keys *change* writes and deletes, in-place changes found when forced."""
        if not change.forced:
            return change.changed, change.deleted
        # In-place changes to nested values are invisible to __setitem__, so compare
        # against a fresh decode of what was loaded. Keys with steps are replayed, not
        # written whole.
        data = change.data
        loaded = base if change.loaded is None else change.loaded
        stepped = {step.key for step in change.steps}
        if change.loaded is not None and change.loaded is not change.base:
            # pop_flashes() saved the queue ahead: what it holds now is the store's,
            # which others may have flashed to or popped from since, not this request's.
            stepped.add(FLASHES_KEY)
        changed = change.changed | self.changed_in_place(loaded, data.keys() - stepped, data)
        # The snapshot's own dict: the request changed a copy of it, never its keys.
        return changed, change.deleted | (loaded.data.keys() - data.keys() - stepped)

    def untouched(self, snapshot: Snapshot) -> Snapshot:
        """*snapshot* decoded afresh from its record: the request shares the values of
        the one it loaded, and may have changed them in place."""
        fresh = self._decoded_again(snapshot)
        return snapshot if fresh is None else fresh

    def _decoded_again(self, snapshot: Snapshot) -> Snapshot | None:
        """*snapshot*'s record decoded anew, untouched by what the request changed in
        place; ``None`` if it no longer decodes."""
        return self._decode(snapshot.session_id, snapshot.key, snapshot.record)

    def walk(self, snapshot: Snapshot, value: Any) -> Walk | None:
        """What :meth:`changed_in_place` needs of *value*, just decoded from *snapshot*,
        to find it unchanged quickly, or ``None``."""
        return self._codec.walk(snapshot, value)

    def changed_in_place(
        self,
        snapshot: Snapshot,
        keys: AbstractSet[str],
        data: Mapping[str, Any],
        walks: Mapping[str, Walk | None] = _NO_WALKS,
    ) -> set[str]:
        """The *keys* whose value in *data* differs from what *snapshot* stores: values
        changed in place, which ``__setitem__`` never saw. *walks* are what :meth:`walk`
        found in some of them when they were read."""
        found = self._codec.changed_in_place(snapshot, keys, data, walks)
        if found is not None:
            return found
        original = self._decoded_again(snapshot)
        loaded = {} if original is None else original.data
        return self._codec.stored_differently(keys, data, loaded)

    def stored_differently(
        self, keys: AbstractSet[str], data: Mapping[str, Any], loaded: Mapping[str, Any]
    ) -> set[str]:
        """The *keys* whose value in *data* would not be stored as in *loaded*, exactly."""
        return self._codec.stored_differently(keys, data, loaded)

    def changed_past_steps(
        self,
        snapshot: Snapshot,
        keys: AbstractSet[str],
        data: Mapping[str, Any],
        steps: Sequence[Step],
        now: float,
    ) -> set[str]:
        """The *keys*, each changed by *steps* and also read, whose value in *data* is
        not what the steps make of the value *snapshot* stores: the handler changed it
        in place too, before or after them, and it is to be written whole."""
        original = self._decoded_again(snapshot)
        loaded = {} if original is None else original.data
        fresh = {k: loaded[k] for k in keys if k in loaded}
        deadlines = {} if original is None else dict(original.deadlines)
        replay(fresh, deadlines, [step for step in steps if step.key in keys], frozenset(), now)
        return self._codec.stored_differently(keys, data, fresh)

    def _merged(
        self,
        change: Change,
        base: Snapshot,
        changed: AbstractSet[str],
        deleted: AbstractSet[str],
        now: float,
        target: str,
    ) -> tuple[Record, Snapshot]:
        """Return the record of *change* merged onto *base*, and its snapshot."""
        data, deadlines = merge(
            base, change.data, change.deadlines, changed, deleted, now, change.steps
        )
        session_id = base.session_id
        if change.moving:
            assert change.session_id is not None
            session_id = change.session_id
        remember = base.remember if change.remember is None else change.remember
        user_id = change.user_id if change.user_changed else base.record.user_id
        created_at = base.record.created_at
        client = change.client
        record = self._codec.encode(
            session_id,
            target,
            data,
            (remember, base.ip, deadlines, client.user_agent, client.remote_addr),
            user_id,
            version=1 if change.moving else base.record.version + 1,
            created_at=created_at,
            expires_at=self.expiry.expires_at(
                created_at, now, remember=remember, anonymous=user_id is None
            ),
            last_seen=now,
            base=base,
            # Keys with steps were replayed onto the stored value: rewritten too.
            rewritten=changed | {step.key for step in change.steps},
        )
        return record, Snapshot(session_id, target, record, data, deadlines, remember, base.ip)

    def _create(self, change: Change, now: float) -> Stored:
        data = {k: v for k, v in change.data.items() if key_live(change.deadlines.get(k), now)}
        deadlines = {k: t for k, t in change.deadlines.items() if k in data}
        remember = bool(change.remember)
        client = change.client
        ip = client.bound_ip
        while True:
            session_id = new_session_id()
            key = store_key(session_id)
            record = self._codec.encode(
                session_id,
                key,
                data,
                (remember, ip, deadlines, client.user_agent, client.remote_addr),
                change.user_id,
                version=1,
                created_at=change.created_at,
                expires_at=self.expiry.expires_at(
                    change.created_at, now, remember=remember, anonymous=change.user_id is None
                ),
                last_seen=now,
            )
            if self.timed(
                key, self.store.save, key, record, expected_version=None, replaces=change.stale_key
            ):
                break
            # 256 random bits never collide in practice; if they do, draw again.
        self.metrics.count("saves")
        self.emit("created", key)
        return Stored(session_id, Snapshot(session_id, key, record, data, deadlines, remember, ip))

    def _saved(self, change: Change, snapshot: Snapshot) -> Stored:
        assert change.session_id is not None
        self.metrics.count("saves")
        self.emit("regenerated" if change.moving else "saved", snapshot.key)
        return Stored(change.session_id, snapshot)

    def _tombstone(self, now: float) -> Record | None:
        """The record a regenerate leaves under the old key for ``regenerate_grace``."""
        grace = self._regenerate_grace
        if not grace:
            return None
        # Version 0 marks a tombstone for the store too (it is never refreshed or counted),
        # and a save still expecting the old session's version fails on it.
        return Record(b"", 0, now, now + grace, now, None, PLAIN_META)

    # -- refreshing and ending -----------------------------------------------------------

    def refresh(self, snapshot: Snapshot, expires_at: float, now: float) -> float | Absence | None:
        """Extend a session that was only read, if it is due; return its new expiry.

        *expires_at* is the session's expiry as this request knows it, so a session
        refreshed once in a request is not refreshed again when the response closes.
        ``None``: nothing was due. A :data:`Absence`: the session ended meanwhile.
        """
        remember = snapshot.remember
        anonymous = snapshot.record.user_id is None
        if not self.expiry.refresh_due(expires_at, now, remember=remember, anonymous=anonymous):
            return None
        extended = self.expiry.expires_at(
            snapshot.record.created_at, now, remember=remember, anonymous=anonymous
        )
        if extended <= expires_at:
            return None
        version = snapshot.record.version
        if not self.timed(
            snapshot.key, self.store.refresh, snapshot.key, extended, now, version=version
        ):
            # Saved since, gone, or regenerated by another request: only a reload tells
            # which, and a regenerated session's old cookie must not be expired. A save
            # since gave it the expiry its request chose, which this one, from an older
            # record (remembered, say, where that save forgot it), must not undo.
            reloaded = self._reload(snapshot.session_id, snapshot.key)
            if isinstance(reloaded, Snapshot):
                return None if reloaded.record.version != version else "gone"
            return reloaded
        self.metrics.count("refreshes")
        self.emit("refreshed", snapshot.key)
        return extended

    def delete(self, key: str) -> bool:
        """End the session stored under *key*; ``True`` if it was live."""
        ended = self.timed(key, self.store.delete, key)
        if ended:
            self.emit("invalidated", key)
        return ended

    def end(self, key: str) -> bool:
        """End the session a listing named *key* from outside it (an administrator, the
        cap); ``True`` if it was live.

        A tombstone is left alone: the session moved to a new id that the store can't
        name, and a request still carrying the old cookie must find the tombstone, or
        its response would delete the browser's new cookie.
        """
        record = self._read(key)
        if record is None or record.version == 0:
            return False
        return self.delete(key)

    def enforce_cap(self, user_id: str, current: str, now: float) -> None:
        """End *user_id*'s oldest sessions beyond ``max_sessions_per_user``."""
        cap = self._max_sessions_per_user
        if cap is None:
            return
        infos = self.timed(
            current, list_user_sessions, self.store, user_id, now, self._absolute_timeout
        )
        if len(infos) <= cap:
            return
        mine = next((info for info in infos if info.handle == current), None)
        if mine is None:
            return  # ended meanwhile, by another login's cap or a logout
        # list_user_sessions is newest first: the cap keeps the newest others. Of the
        # sessions saved after this one, by logins racing it, the latest is spared too:
        # its own check ends this one instead (ending each other, two logins would leave
        # none). Sparing only that one, each check leaves at most one over the cap, and
        # the last check to list sees every login that raced.
        others = [info for info in infos if info.handle != current]
        spared = {info.handle for info in others[: cap - 1]}
        later = [info for info in others if info.last_seen >= mine.last_seen]
        if later:
            spared.add(max(later, key=lambda info: (info.last_seen, info.handle)).handle)
        for info in others:
            if info.handle not in spared:
                self.end(info.handle)

    # -- reading records -----------------------------------------------------------------

    def _read(self, key: str) -> Record | None:
        self.metrics.count("loads")
        return self.timed(key, self.store.load, key)

    def _landed(self, key: str, record: Record) -> bool:
        """Whether *record*, written under a new *key* that a failed save named, is stored.

        Only the request that drew a new id knows its key, so finding its very write
        there means the save ran and its answer was lost (a driver sent it again, and
        the second run found the key taken and the old one a tombstone).
        """
        try:
            stored = self._read(key)
        except CorruptRecord:
            return False
        return (
            stored is not None and stored.version == record.version and stored.data == record.data
        )

    def _reload(self, session_id: str, key: str) -> Snapshot | Absence:
        absence: Absence = "corrupt"
        try:
            record = self._read(key)
        except CorruptRecord as exc:
            self._corrupt(key, exc)
        else:
            if record is None:
                absence = "gone"
            elif record.version == 0:
                absence = "moved"
            else:
                snapshot = self._decode(session_id, key, record)
                if snapshot is not None:
                    return snapshot
        log.info("session %s ended by another request; this request's changes dropped", key[:8])
        return absence

    def _expired(self, key: str, absence: Absence) -> Absence:
        self.metrics.count("expired")
        self.emit("expired", key)
        return absence

    def _decode(self, session_id: str, key: str, record: Record) -> Snapshot | None:
        """Open and decode *record*, or log and count it and return ``None`` if corrupt."""
        try:
            return self._codec.decode(session_id, key, record)
        # A custom serializer may raise anything on garbage; any failure is a corrupt
        # record, which counts as a missing session.
        except Exception as exc:
            self._corrupt(key, exc)
            return None

    def _corrupt(self, key: str, exc: Exception) -> None:
        """Log, count and announce the unreadable record under *key*."""
        # The store's CorruptRecord says what is wrong in its own words; a decoder's
        # message may quote the data, so only its type is logged.
        reason = str(exc) if isinstance(exc, CorruptRecord) else type(exc).__name__
        log.warning("session record %s… is corrupt and was ignored (%s)", key[:8], reason)
        self.metrics.count("corrupt")
        self.emit("corrupt", key)
