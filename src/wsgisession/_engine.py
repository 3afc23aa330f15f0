"""Loading, merging and saving sessions: everything between a Session and its store."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

from . import _clock
from ._record import PLAIN_META, Snapshot, decode_meta, encode_meta, merge
from .config import Config
from .cookies import CookieId, SessionCookie
from .errors import SessionError, StoreError
from .events import EventName, Metrics, SessionEvent, notify
from .ids import new_session_id, store_key
from .serializers import Serializer
from .stores.base import CorruptRecord, LockTimeout, Record, Store
from .users import list_user_sessions

if TYPE_CHECKING:
    from wsgiref.types import WSGIEnvironment

    from .session import Session

log = logging.getLogger("wsgisession")

_T = TypeVar("_T")

#: Why a validly signed cookie brought no session: it expired or was ended ("gone"),
#: its record is undecodable ("corrupt"), ``bind_ip`` refused it ("foreign"), or it
#: was regenerated less than ``regenerate_grace`` ago ("moved").
Miss = Literal["gone", "corrupt", "foreign", "moved"]


class Engine:
    """The policy of one middleware: timeouts, merging, saving and cookies."""

    def __init__(
        self, config: Config, store: Store, serializer: Serializer, cookie: SessionCookie
    ) -> None:
        self.config = config
        self.store = store
        self.serializer = serializer
        self.cookie = cookie
        self.metrics = Metrics()
        self._listeners = config.listeners
        initializer = config.initializer
        self._initializer: Callable[[], Mapping[str, Any]] | None
        if initializer is None or callable(initializer):
            self._initializer = initializer
        else:
            self._initializer = lambda: initializer

    # -- instrumentation -------------------------------------------------------------

    def emit(self, name: EventName, handle: str | None) -> None:
        """Tell the listeners, if any, that *name* happened to the session *handle*."""
        if self._listeners:
            notify(self._listeners, SessionEvent(name, handle, _clock.now()))

    def call(self, handle: str | None, operation: Callable[..., _T], *args: Any, **kw: Any) -> _T:
        """Run a store *operation*, timing it and reporting a :exc:`StoreError`."""
        start = time.perf_counter()
        try:
            return operation(*args, **kw)
        except StoreError:
            self.metrics.count("store_errors")
            self.emit("store_error", handle)
            raise
        finally:
            self.metrics.observe(time.perf_counter() - start)

    # -- reading ------------------------------------------------------------------

    def read_cookie(self, environ: WSGIEnvironment) -> CookieId | None:
        """Return the verified session id the request carries, if any."""
        self.metrics.count("requests")
        header = environ.get("HTTP_COOKIE")
        if not header:
            return None
        return self.cookie.read(header)

    def initial_data(self) -> dict[str, Any]:
        """Return the data a new session starts with: a deep copy of ``initializer``."""
        if self._initializer is None:
            return {}
        return copy.deepcopy(dict(self._initializer()))

    def load(
        self, key: str, environ: WSGIEnvironment, now: float
    ) -> tuple[Snapshot | None, Miss | None]:
        """Return the live session under *key*, or ``None`` and why there is none."""
        try:
            record = self._load(key)
        except CorruptRecord as exc:
            self._corrupt(key, exc)
            return None, "corrupt"
        if record is None or record.expires_at <= now:
            return self._expired(key, "gone")
        if record.version == 0:
            return self._expired(key, "moved")
        snapshot = self.decode(key, record)
        if snapshot is None:
            return None, "corrupt"
        absolute = self.config.absolute_timeout
        if absolute is not None and record.created_at + absolute <= now:
            return self._expired(key, "gone")
        if self.config.bind_ip and snapshot.ip != environ.get("REMOTE_ADDR"):
            log.info("session %s presented from another address; treated as expired", key[:8])
            return self._expired(key, "foreign")
        return snapshot, None

    def _load(self, key: str) -> Record | None:
        self.metrics.count("loads")
        return self.call(key, self.store.load, key)

    def _expired(self, key: str, miss: Miss) -> tuple[None, Miss]:
        self.metrics.count("expired")
        self.emit("expired", key)
        return None, miss

    def decode(self, key: str, record: Record) -> Snapshot | None:
        """Decode *record*, or log it and return ``None`` if it is corrupt."""
        try:
            deadlines, remember, ip = decode_meta(record.meta)
            data = self.serializer.loads(record.data)
            if not isinstance(data, dict):
                raise ValueError(f"data is a {type(data).__name__}, not a dict")
        # A custom serializer may raise anything on garbage; any failure is a corrupt
        # record, which counts as a missing session.
        except Exception as exc:
            self._corrupt(key, exc)
            return None
        return Snapshot(key, record, data, deadlines, remember, ip)

    def _corrupt(self, key: str, exc: Exception) -> None:
        """Log, count and announce the unreadable record under *key*."""
        # The store's CorruptRecord says what is wrong in its own words; a decoder's
        # message may quote the data, so only its type is logged.
        reason = str(exc) if isinstance(exc, CorruptRecord) else type(exc).__name__
        log.warning("session record %s… is corrupt and was ignored (%s)", key[:8], reason)
        self.metrics.count("corrupt")
        self.emit("corrupt", key)

    # -- time -------------------------------------------------------------------------

    def lifetime(self, remember: bool) -> int:
        """The idle lifetime of a session, remembered or not."""
        return self.config.remember_me_timeout if remember else self.config.timeout

    def expiry(self, created_at: float, now: float, *, remember: bool) -> float:
        """When a session used at *now* expires, capped by ``absolute_timeout``."""
        expires_at = now + self.lifetime(remember)
        absolute = self.config.absolute_timeout
        if absolute is not None:
            expires_at = min(expires_at, created_at + absolute)
        return expires_at

    # -- writing --------------------------------------------------------------------

    def delete(self, key: str) -> bool:
        """End the session stored under *key*; ``True`` if it was live."""
        ended = self.call(key, self.store.delete, key)
        if ended:
            self.emit("invalidated", key)
        return ended

    def encode(self, data: dict[str, Any]) -> bytes:
        """Serialize *data* to bytes; :meth:`_record` checks the size of the whole."""
        out = self.serializer.dumps(data)
        return out.encode("utf-8") if isinstance(out, str) else out

    def _record(
        self,
        data: bytes,
        meta: bytes,
        user_id: str | None,
        *,
        version: int,
        created_at: float,
        expires_at: float,
        last_seen: float,
    ) -> Record:
        """Return the record to store, refusing one over ``max_size`` in all.

        The data, the per-key deadlines and client details in the meta, and the user
        id all count, so no mix of keys and key timeouts grows a record past the limit.
        """
        size = len(data) + len(meta) + (0 if user_id is None else len(user_id.encode()))
        if size > self.config.max_size:
            self._too_big(size)
        return Record(data, version, created_at, expires_at, last_seen, user_id, meta)

    def _too_big(self, size: int) -> NoReturn:
        raise SessionError(
            f"the session is {size} bytes stored (data, key timeouts and metadata), over "
            f"max_size {self.config.max_size}; it was not saved"
        )

    def _meta(
        self,
        remember: bool,
        ip: str | None,
        deadlines: dict[str, float],
        environ: WSGIEnvironment,
    ) -> bytes:
        agent = address = None
        if self.config.track_clients:
            agent = environ.get("HTTP_USER_AGENT")
            address = environ.get("REMOTE_ADDR")
        return encode_meta(remember, ip, deadlines, agent, address)

    def save(self, session: Session, now: float) -> bool:
        """Write *session*'s changes on top of what the store holds, by compare-and-set.

        A save first merges onto the record it loaded and writes by compare-and-set,
        which costs nothing extra when nobody else writes the session. If another save
        got there first, it takes the session's save lock (:meth:`Store.save_locked`),
        under which it merges onto what is stored and writes, and cannot lose again,
        waiting its turn behind the saves that asked first for at most
        ``save_timeout`` seconds from the start of the save. Retrying the
        compare-and-set instead only pays off with little contention, where the lock
        costs no more; under heavy contention the losers' retries slow the winner, and
        one in a few requests then loses round after round.

        A session that a concurrent request deleted (a logout), regenerated or that
        expired meanwhile is not written again: a logout is never undone, and an
        ended session's data is never served again, so its changes are dropped and
        logged, the session is marked ended, and ``False`` is returned.

        :raises StoreError: The store failed, or ``save_timeout`` ran out while
            concurrent saves held the session's lock.
        :raises SessionError: The session is larger than ``max_size``.
        """
        if session._snapshot is None:
            self._create(session, now)
            return True
        deadline = time.monotonic() + self.config.save_timeout
        base = session._snapshot
        session_id = session._id
        assert session_id is not None
        moving = session._moving
        target = store_key(session_id) if moving else base.key
        tombstone = self._tombstone(now) if moving else None
        if moving:
            # Regenerating writes a new key, which no compare-and-set protects, and
            # deletes the old one. Reading the old record first keeps a concurrent
            # request's keys; the save names the version it merged onto, so a write
            # (or a logout) landing since makes it fail and the loop merge again.
            reloaded = self._reload(base.key)
            if isinstance(reloaded, str):
                return _ended(session, reloaded)
            base = reloaded
        changes = self._changes(session)
        record, snapshot = self._merged(session, base, changes, now, target, moving)
        if self.call(
            target,
            self.store.save,
            target,
            record,
            expected_version=None if moving else base.record.version,
            replaces=base.key if moving else None,
            replaces_version=base.record.version if moving else None,
            tombstone=tombstone,
        ):
            return self._saved(session, session_id, snapshot, moving)
        self.metrics.count("conflicts")
        self.emit("conflict", base.key)
        return self._save_locked(session, base.key, changes, now, deadline, tombstone)

    def _save_locked(
        self,
        session: Session,
        key: str,
        changes: tuple[set[str], set[str]],
        now: float,
        deadline: float,
        tombstone: Record | None,
    ) -> bool:
        """Save under the lock of the session stored under *key*, after losing rounds."""
        session_id = session._id
        assert session_id is not None
        moving = session._moving
        target = store_key(session_id) if moving else key
        built: list[Snapshot] = []
        outcome: list[Miss] = []
        failure: list[BaseException] = []

        def build(current: Record) -> Record | None:
            built.clear()
            outcome.clear()
            if current.version == 0:
                outcome.append("moved")
                return None
            snapshot = self.decode(key, current)
            if snapshot is None:
                outcome.append("corrupt")
                return None
            try:
                record, merged = self._merged(session, snapshot, changes, now, target, moving)
            # Handed back untouched: a store may translate what escapes into StoreError.
            except BaseException as exc:
                failure.append(exc)
                return None
            built.append(merged)
            return record

        started = time.monotonic()
        self.metrics.count("locked_saves")
        try:
            written = self.call(
                key,
                self.store.save_locked,
                key,
                build,
                timeout=max(0.0, deadline - started),
                moves_to=target if moving else None,
                tombstone=tombstone,
            )
        except LockTimeout as exc:
            raise StoreError(
                f"gave up saving the session after save_timeout ({self.config.save_timeout} s): "
                "concurrent saves of it held its lock all that time"
            ) from exc
        finally:
            self.metrics.count("lock_wait_seconds", time.monotonic() - started)
        if failure:
            raise failure[0]
        if written is None or not built:
            log.info(
                "session %s ended by another request; this request's changes dropped", key[:8]
            )
            return _ended(session, outcome[0] if outcome else "gone")
        return self._saved(session, session_id, built[0], moving)

    def _merged(
        self,
        session: Session,
        base: Snapshot,
        changes: tuple[set[str], set[str]],
        now: float,
        target: str,
        moving: bool,
    ) -> tuple[Record, Snapshot]:
        """Return the record of *session*'s changes merged onto *base*, and its snapshot."""
        changed, deleted = changes
        data, deadlines = merge(base, session._data, session._deadlines, changed, deleted, now)
        remember = session._remember if session._remember_changed else base.remember
        user_id = session._user_id if session._user_changed else base.record.user_id
        created_at = base.record.created_at
        record = self._record(
            self.encode(data),
            self._meta(remember, base.ip, deadlines, session._environ),
            user_id,
            version=1 if moving else base.record.version + 1,
            created_at=created_at,
            expires_at=self.expiry(created_at, now, remember=remember),
            last_seen=now,
        )
        return record, Snapshot(target, record, data, deadlines, remember, base.ip)

    def _saved(self, session: Session, session_id: str, snapshot: Snapshot, moving: bool) -> bool:
        session._use_snapshot(session_id, snapshot)
        self.metrics.count("saves")
        self.emit("regenerated" if moving else "saved", snapshot.key)
        return True

    def _tombstone(self, now: float) -> Record | None:
        """The record a regenerate leaves under the old key for ``regenerate_grace``."""
        grace = self.config.regenerate_grace
        if not grace:
            return None
        # Version 0 marks a tombstone for the store too (it is never refreshed or counted),
        # and a save still expecting the old session's version fails on it.
        return Record(b"", 0, now, now + grace, now, None, PLAIN_META)

    def _reload(self, key: str) -> Snapshot | Miss:
        miss: Miss = "corrupt"
        try:
            record = self._load(key)
        except CorruptRecord as exc:
            self._corrupt(key, exc)
        else:
            if record is None:
                miss = "gone"
            elif record.version == 0:
                miss = "moved"
            else:
                snapshot = self.decode(key, record)
                if snapshot is not None:
                    return snapshot
        log.info("session %s ended by another request; this request's changes dropped", key[:8])
        return miss

    def _create(self, session: Session, now: float) -> None:
        data = {k: v for k, v in session._data.items() if session._live(k)}
        deadlines = {k: t for k, t in session._deadlines.items() if k in data}
        ip = self._client_ip(session._environ)
        record = self._record(
            self.encode(data),
            self._meta(session._remember, ip, deadlines, session._environ),
            session._user_id,
            version=1,
            created_at=session._created_at,
            expires_at=self.expiry(session._created_at, now, remember=session._remember),
            last_seen=now,
        )
        while True:
            session_id = new_session_id()
            key = store_key(session_id)
            stale = session._stale_key
            if self.call(key, self.store.save, key, record, expected_version=None, replaces=stale):
                break
            # 256 random bits never collide in practice; if they do, draw again.
        session._use_snapshot(
            session_id, Snapshot(key, record, data, deadlines, session._remember, ip)
        )
        self.metrics.count("saves")
        self.emit("created", key)

    def _client_ip(self, environ: WSGIEnvironment) -> str | None:
        if not self.config.bind_ip:
            return None
        address: str | None = environ.get("REMOTE_ADDR")
        return address

    def _changes(self, session: Session) -> tuple[set[str], set[str]]:
        changed, deleted = set(session._changed), set(session._deleted)
        if session._force and session._snapshot is not None:
            # In-place changes to nested values are invisible to __setitem__, so compare
            # against a fresh decode of what was loaded.
            original = self.decode(session._snapshot.key, session._snapshot.record)
            before = {} if original is None else original.data
            changed |= {k for k, v in session._data.items() if k not in before or before[k] != v}
            deleted |= before.keys() - session._data.keys()
        return changed, deleted

    def refresh(self, session: Session, now: float) -> bool:
        """Extend an unchanged session past half its lifetime; ``True`` if it moved."""
        snapshot = session._snapshot
        if snapshot is None:
            return False
        lifetime = self.lifetime(snapshot.remember)
        # The session's expiry, not the snapshot's: once refreshed in this request (at
        # start_response), it is not refreshed again when the response closes.
        remaining = session._expires_at - now
        if not self.config.save_every_request and remaining >= lifetime / 2:
            return False
        expires_at = self.expiry(snapshot.record.created_at, now, remember=snapshot.remember)
        if expires_at <= session._expires_at:
            return False
        if not self.call(snapshot.key, self.store.refresh, snapshot.key, expires_at, now):
            # Gone, or regenerated by another request: only a reload tells which, and a
            # regenerated session's old cookie must not be expired.
            reloaded = self._reload(snapshot.key)
            _ended(session, "gone" if isinstance(reloaded, Snapshot) else reloaded)
            return False
        session._expires_at = expires_at
        self.metrics.count("refreshes")
        self.emit("refreshed", snapshot.key)
        return True

    # -- the response -------------------------------------------------------------------

    def persistent(self, session: Session) -> bool:
        """Whether the session's cookie outlives the browser."""
        return session._remember or self.config.cookie_max_age is not None

    def finish(self, session: Session, failed: bool) -> list[tuple[str, str]]:
        """Save *session* as the response starts and return the headers to add."""
        now = _clock.now()
        https = session._environ.get("wsgi.url_scheme") == "https"
        issue = False
        linking = session._user_changed and session._user_id is not None
        if not failed:
            if session._snapshot is None:
                # Initializer items alone are not a change, so they store nothing.
                worth_storing = session.modified and (
                    session._user_id is not None or any(session._live(k) for k in session._data)
                )
                if worth_storing and session._moved:
                    # Its cookie would replace the one the regenerate just gave the browser.
                    log.info(
                        "request with a just-regenerated session id; its changes were dropped"
                    )
                    self.emit("conflict", None)
                elif worth_storing:
                    self.save(session, now)
                    issue = True
            else:
                moving = session._moving
                if session.modified:
                    remember_changed = session._remember_changed
                    saved = self.save(session, now)
                    issue = saved and (moving or remember_changed or self.persistent(session))
                elif self.refresh(session, now):
                    issue = self.persistent(session)
                if session._snapshot is not None and session._cookie is not None:
                    issue = issue or session._cookie.stale_key
        if linking and session._snapshot is not None and self.config.max_sessions_per_user:
            self.enforce_cap(session._snapshot.record.user_id, session._snapshot.key, now)
        headers: list[tuple[str, str]] = []
        if issue and session._snapshot is not None and session._id is not None:
            max_age = self._max_age(session, now)
            headers.append(
                ("Set-Cookie", self.cookie.set_header(session._id, max_age=max_age, https=https))
            )
        elif (
            session._cookie is not None
            and not session._moved
            and (
                session._invalidated
                or (session._expired and session._snapshot is None and not session._foreign)
            )
        ):
            headers.append(("Set-Cookie", self.cookie.expire_header(https=https)))
        return headers

    def enforce_cap(self, user_id: str | None, current: str, now: float) -> None:
        """End *user_id*'s oldest sessions beyond ``max_sessions_per_user``."""
        cap = self.config.max_sessions_per_user
        if user_id is None or cap is None:
            return
        infos = self.call(current, list_user_sessions, self.store, user_id, now)
        if len(infos) <= cap:
            return
        # list_user_sessions is newest first, so the oldest are at the end.
        for info in [i for i in infos if i.handle != current][cap - 1 :]:
            self.delete(info.handle)

    def _max_age(self, session: Session, now: float) -> int | None:
        if session._remember:
            return session.max_age(now)
        return self.config.cookie_max_age

    def finish_late(self, session: Session) -> None:
        """Save changes made while the body was produced, once the response closes.

        No header can be sent any more, so only what needs none happens: saving a
        stored session, refreshing one first read during the body, and ending a
        user's oldest sessions when this one was linked to them.
        """
        if session._snapshot is None:
            return
        now = _clock.now()
        if session.modified:
            linking = session._user_changed and session._user_id is not None
            if self.save(session, now) and linking:
                self.enforce_cap(session._user_id, session._snapshot.key, now)
        else:
            self.refresh(session, now)


def _ended(session: Session, miss: Miss) -> bool:
    """Mark *session* as ended by another request.

    Its cookie is then expired, unless the session was regenerated ("moved"): the
    browser may already hold the new cookie, which an expiring one would delete.
    """
    session._snapshot = None
    session._expired = True
    session._moved = miss == "moved"
    return False
