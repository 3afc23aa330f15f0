"""The record and the store interface that every backend implements."""

from __future__ import annotations

import abc
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Final, Self

from ..errors import StoreError

__all__ = ["CorruptRecord", "LockTimeout", "Record", "Store", "mask_url", "translate_errors"]


class CorruptRecord(Exception):
    """What :meth:`Store.load` raises for something under a key that is no readable record.

    Bad framing, a failed checksum, a truncated file, a layout the store does not know:
    the store works, but this one record can't be read. It is not a
    :exc:`~wsgisession.StoreError`: the middleware treats the session as missing, logs
    the key's first characters and the reason, counts it in ``metrics()["corrupt"]``
    and emits a ``corrupt`` event. The message says what is wrong, never what the
    record holds.
    """


class LockTimeout(StoreError):
    """A locked save could not take the session's save lock in the time it was given."""


@dataclass(frozen=True, slots=True)
class Record:
    """One stored session as a store sees it.

    ``data`` is the serializer's output and ``meta`` a small blob the middleware
    keeps beside it (the remember-me flag, client details); a store never looks
    inside either. ``version`` is set by the caller, one more than the version it
    replaces (``1`` for a new record), and is what :meth:`Store.save` compares.
    Times are Unix timestamps from the application's clock.

    A record of version ``0`` is a *tombstone*: what a regenerated session leaves
    under its old key for a short while (see :meth:`Store.save`). It is loaded like
    any record, so that the middleware can see it, but it is no session: a refresh
    leaves it alone and returns ``False``, a delete of it returns ``False``, and
    :meth:`Store.count` does not count it.
    """

    data: bytes
    version: int
    created_at: float
    #: The record must not be returned by :meth:`Store.load` once this has passed.
    expires_at: float
    #: When the session was last saved or refreshed.
    last_seen: float
    #: The user the session belongs to, kept for the store's user index.
    user_id: str | None = None
    meta: bytes = b""


class Store(abc.ABC):
    """Where session records live, keyed by the SHA-256 hex digest of the session id.

    A store never sees a raw session id and never decodes a record. Concurrency is
    handled by one primitive, the versioned compare-and-set of :meth:`save`; the
    middleware merges a request's changes on top of the stored record and retries.

    A compare-and-set can lose to concurrent saves again and again, so every store
    also offers :meth:`save_locked`, which holds the session's save lock across the
    read, the merge and the write, and so cannot lose.

    Every method raises :exc:`~wsgisession.StoreError`, chained to the driver's
    exception, when the backend fails, and no other exception. Building a store never
    contacts its backend: the first operation does.
    """

    #: True when the backend drops records at ``expires_at`` by itself (Redis TTL),
    #: so the middleware's background purge has nothing to do.
    native_expiry: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build the store from its URL and ``store_options``, without contacting the backend.

        Take ``**options`` and refuse the unknown ones here: the registry can't check
        the signature of a store that an entry point loads, and passes them unchecked.

        :raises ConfigError: The URL or an option is malformed or unknown; the message
            names the option.
        """

    @abc.abstractmethod
    def load(self, key: str) -> Record | None:
        """Return the live record under *key*, or ``None`` if it is missing or expired.

        A record whose ``expires_at`` has passed by the application's clock is never
        returned, whatever the backend's own expiry says.

        :raises CorruptRecord: Something is under *key* that the store can't read as a
            record (where the store frames records itself).
        """

    @abc.abstractmethod
    def save(
        self,
        key: str,
        record: Record,
        *,
        expected_version: int | None,
        replaces: str | None = None,
        replaces_version: int | None = None,
        tombstone: Record | None = None,
    ) -> bool:
        """Write *record* if the stored version still equals *expected_version*.

        ``expected_version=None`` creates: it succeeds only if no live record exists
        under *key* (an expired one is overwritten). With *replaces*
        (``Session.regenerate()``), the record under that key is deleted in the same
        atomic step where the backend allows it. Return ``False``, writing nothing,
        when another writer got there first or the record is gone.

        With *replaces* and *replaces_version* both given, the save also requires a
        live record under *replaces* whose version is exactly *replaces_version*,
        checked in the same atomic step as the write and the delete; otherwise it
        returns ``False`` and neither writes nor deletes anything. That is how a
        regenerate moves a session without losing a concurrent request's write to
        the old key, or undoing a logout that deleted it. With
        ``replaces_version=None``, whatever is under *replaces* is deleted (a corrupt
        record, for one). A *replaces* equal to *key* is ignored, with its version.

        With *replaces* and *tombstone*, the record under *replaces* is not deleted but
        overwritten by *tombstone*, in the same step and under the same conditions. A
        tombstone is an ordinary record to the store (it has no user, so the replaced
        record leaves its user's index as if deleted); the middleware writes one so
        that it can tell a session regenerated a moment ago from an expired one.

        A plain save never succeeds while another caller holds *key*'s save lock
        (:meth:`save_locked`): it waits for the lock, or returns ``False``.
        """

    @abc.abstractmethod
    def save_locked(
        self,
        key: str,
        build: Callable[[Record], Record | None],
        *,
        timeout: float,
        moves_to: str | None = None,
        tombstone: Record | None = None,
    ) -> Record | None:
        """Write ``build(current)`` while holding *key*'s save lock: a save that can't lose.

        This is the fallback of a save whose compare-and-set lost a race. The store
        takes *key*'s exclusive save lock, waiting for it at most *timeout* seconds
        (:exc:`LockTimeout` after that) behind the callers that asked before it, first
        come, first served where the backend allows. While it holds the lock, no other
        save of *key* succeeds: a plain :meth:`save` waits for the lock or returns
        ``False``. Refreshes and deletes are not held back: a delete that lands first
        simply leaves nothing to build on.

        Under the lock the store loads the live record under *key*. If there is none,
        it writes nothing and returns ``None`` without calling *build*. Otherwise it
        writes ``build(current)``: under *key* in place of *current*, or, with
        *moves_to*, as a new record under *moves_to* while the record under *key* is
        deleted (or overwritten by *tombstone*) in the same step, as :meth:`save`'s
        *replaces* does: a live record already under *moves_to* is left alone, and
        nothing is written. It returns the record written, or ``None`` if *build*
        returned ``None`` or *moves_to* was taken. *build* may run more than once,
        where the store has to start over (a lease it lost, say); what it raises
        propagates unchanged, with the lock released and nothing written.
        """

    @abc.abstractmethod
    def refresh(
        self, key: str, expires_at: float, last_seen: float, *, version: int | None = None
    ) -> bool:
        """Extend a live record's expiry without rewriting its data or its version.

        Each of ``expires_at`` and ``last_seen`` becomes the later of the stored value
        and the given one, so a refresh never shortens an expiry that another request
        set. Return ``False`` if no live record is under *key*, or only a tombstone,
        or, with *version*, a record of another version: a save since then set the
        expiry its own request chose (a shorter one, if it turned remember-me off),
        which a refresh computed from the older record must not undo.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the record under *key*; ``True`` if a live one, not a tombstone, was there."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Reach the backend once, creating what it needs (a table, a directory).

        :raises StoreError: The backend cannot be reached or used.
        """

    @abc.abstractmethod
    def cleanup(self, *, limit: int | None = None) -> int:
        """Delete expired records, at most *limit* of them, and return how many.

        A store with native expiry returns ``0``.
        """

    @abc.abstractmethod
    def user_records(self, user_id: str) -> list[tuple[str, Record]]:
        """Return the live records whose ``user_id`` is *user_id*, as ``(key, record)``.

        The store keeps a user index from ``Record.user_id``: :meth:`save` links a
        record to its user (and unlinks it from a previous one), :meth:`delete`, the
        ``replaces`` of a save, expiry and :meth:`cleanup` unlink it. Where the backend
        allows, the index changes in the same atomic step as the record; where it can't,
        entries are checked against the records when read, with the same result. An
        expired or deleted record is never returned, and the index never grows without
        bound. The order of the list is not defined.
        """

    def count(self) -> int | None:
        """Return how many live records, tombstones aside, there are; ``None`` if unknown."""
        return None

    def claim_purge(self, interval: float) -> bool:
        """Claim the right to purge expired records for the next *interval* seconds.

        Workers that share a store call this before a background purge, and only the
        one that gets ``True`` purges, so they never purge at the same time. The base
        implementation suits stores that live in one process and always says yes.
        """
        return True

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections and handles. Safe to call more than once."""

    def __enter__(self) -> Self:
        """Return the store itself; nothing is opened, as building contacted nothing."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Call :meth:`close`; an exception raised in the block propagates."""
        self.close()


# A password given as a query parameter (``?password=``), as some drivers accept.
_QUERY_PASSWORD: Final = re.compile(r"([?&](?:password|passwd|pwd)=)[^&#]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Return *url* with any password replaced by ``***``, fit for messages and logs.

    The password runs from the first ``:`` after the scheme to the last ``@``, so one
    holding ``@``, ``:``, ``/``, ``?`` or ``#`` is hidden whole. An ``@`` in the path or
    the query hides the host as well: when in doubt, more is hidden, never less. A
    ``password=`` query parameter is masked too.
    """
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    colon = rest.find(":", 0, at) if sep and at >= 0 else -1
    if colon < 0 or "/" in rest[:colon]:
        return url
    return f"{scheme}://{rest[:colon]}:***{rest[at:]}"


class translate_errors:
    """Turn the backend's *errors* raised inside the block into :exc:`StoreError`.

    *what* names the store in the message, with any password masked: its URL, say,
    which the store keeps itself (:class:`Store` has no attribute for it). The
    original exception stays attached as ``__cause__``. Exceptions not among *errors*,
    :exc:`StoreError` included, leave the block unchanged. A plain class rather than a
    generator-based context manager, as every store call enters one.
    """

    __slots__ = ("_errors", "_what")

    def __init__(self, what: str, *errors: type[BaseException]) -> None:
        self._what = what
        self._errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, StoreError) or not isinstance(exc, self._errors):
            return
        raise StoreError(f"{mask_url(self._what)}: {self.describe(exc)}") from exc

    def describe(self, exc: BaseException) -> str:
        """How the message shows *exc*: its type and text. A store may hide more."""
        return f"{type(exc).__name__}: {exc}"
