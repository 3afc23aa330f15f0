"""The steps :class:`~wsgisession.stores.redis.RedisStore` takes outside its scripts.

On a standalone server or a Sentinel master, each write is one Lua script that
changes the session, the key it replaces and its user's sorted set together. On
Redis Cluster those keys live in different slots and no script may touch more than
one, so the store does the rest here, as separate commands, in the order that fails
safe: a regenerate deletes the old record before writing the new one, and a user's
set is changed after the session. A regenerate that leaves a tombstone writes it in
the old record's place in the step that would have deleted it, and a locked save
that moves a session (:func:`finish_locked_move`) vacates the old key under its
lock before it writes the new one. :func:`change_index` also serves
:meth:`~wsgisession.stores.redis.RedisStore.user_records` on every deployment, when
it drops the stale entries it found.

Kept apart from :mod:`wsgisession.stores.redis` so that the store reads as one
script per operation, with the Cluster fallbacks in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ..errors import StoreError
from . import redis_scripts
from ._redis_replies import user_of, wrong_type
from .base import Record

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["after_save", "change_index", "finish_locked_move", "free", "move"]

log = logging.getLogger("wsgisession")


def move(
    store: RedisStore,
    key: str,
    record: Record,
    expected_version: int | None,
    replaces: str,
    replaces_version: int,
    tombstone: Record | None,
    now: float,
) -> bool:
    """Save *record* under *key* in place of version *replaces_version* of *replaces*.

    On Redis Cluster, where no script can touch both keys, this is two steps in
    the safe order: first the old record is deleted (or overwritten by *tombstone*)
    if it is still live and of that version (one script, an atomic
    compare-and-delete), and only then is the new one written. A concurrent write
    to the old key therefore makes this save fail rather than be lost, and a logout
    that deleted it is never undone. A crash or failure between the two steps loses
    the session (its user is logged out) instead of leaving two live ids for it:
    the safe direction. The new key is checked first, so that a save bound to fail
    on it deletes nothing; only a writer of that same key racing this save (a
    regenerate's key is fresh, known to no one else) could still make the second
    step fail after the first. With *tombstone*, what such a failure leaves under
    the old key is the tombstone: the session reads as regenerated, not as live.
    """
    if not _may_write(store, key, expected_version, now):
        return False
    taken = store._run(
        redis_scripts.DELETE,
        [store.key_prefix + replaces],
        [
            repr(now),
            "",
            replaces,
            redis_scripts.version_arg(replaces_version),
            *redis_scripts.tombstone_args(tombstone, now),
        ],
    )
    if taken[0] != 1:
        return False
    gone = user_of(taken[1])
    try:
        result = _save_new(store, key, record, expected_version, now)
    finally:
        if gone is not None:
            change_index(store, gone, "unlink", [(replaces, 0.0)], quiet=True)
    saved: bool = result[0] == 1
    if saved:
        after_save(store, key, record, user_of(result[1]), None)
    return saved


def finish_locked_move(
    store: RedisStore, key: str, moves_to: str, record: Record, gone: bytes | None
) -> Record | None:
    """Write *record* under *moves_to* once a locked save vacated *key*, on Redis Cluster.

    The second step of a locked move: the lock's script already deleted *key*, or
    left the tombstone there, after checking its lease and the version built on,
    and *gone* is the user that record had. As with :func:`move`, a failure before
    this write loses the session rather than leave two live ids for it. Return
    *record*, or ``None`` if *moves_to* turned out to hold a live record.
    """
    try:
        result = _save_new(store, moves_to, record, None, time.time())
    finally:
        if gone is not None:
            change_index(store, gone, "unlink", [(key, 0.0)], quiet=True)
    if result[0] != 1:
        log.warning("session %s: the key a locked save moved it to was taken", key[:8])
        return None
    after_save(store, moves_to, record, user_of(result[1]), None)
    return record


def free(store: RedisStore, key: str) -> bool:
    """Whether no live record is under *key*, so that a new session may go there."""
    return _may_write(store, key, None, time.time())


def _save_new(
    store: RedisStore, key: str, record: Record, expected_version: int | None, now: float
) -> Any:
    """Run ``SAVE`` for *record* under *key* alone, replacing nothing."""
    args: list[str | bytes | int] = [
        redis_scripts.version_arg(expected_version),
        repr(now),
        redis_scripts.ttl_ms(record.expires_at, now),
        "",
        key,
        "",
        b"",
        *redis_scripts.tombstone_args(None, now),
        redis_scripts.encode(record),
    ]
    return store._run(redis_scripts.SAVE, [store.key_prefix + key, store._lock_name(key)], args)


def _may_write(store: RedisStore, key: str, expected_version: int | None, now: float) -> bool:
    """Whether a save of *key* expecting *expected_version* would pass its check now."""
    with store._errors():
        try:
            head: Any = store.client.getrange(
                store.key_prefix + key, 0, redis_scripts.HEADER.size - 1
            )
        except ResponseError as exc:
            if not wrong_type(exc):
                raise
            head = b""
    found = redis_scripts.peek(head)
    if found is None or found.expires_at <= now:
        return expected_version is None
    return found.version == expected_version


def after_save(
    store: RedisStore,
    key: str,
    record: Record,
    previous: bytes | None,
    replaces: str | None,
    *,
    tombstone: Record | None = None,
) -> None:
    """Finish a Cluster save of *record* under *key* that its script has written.

    Delete *replaces*, if given (or overwrite it with *tombstone*), link *key* in
    its user's set, and unlink it from the set of *previous*, the user the record
    had before, if that changed.
    """
    # Both steps are tried even if the first fails: a replaced session left alive
    # would still open the session, and one missing from its user's set would
    # escape a "log out everywhere". A stale entry is only dropped late, when read.
    failed: StoreError | None = None
    if replaces is not None:
        try:
            store._delete(replaces, cluster=True, tombstone=tombstone)
        except StoreError as exc:
            failed = exc
    user_id = None if record.user_id is None else record.user_id.encode()
    if user_id is not None:
        change_index(store, user_id, "link", [(key, record.expires_at)])
    if previous is not None and previous != user_id:
        change_index(store, previous, "unlink", [(key, 0.0)], quiet=True)
    if failed is not None:
        raise failed


def change_index(
    store: RedisStore,
    user_id: str | bytes,
    op: str,
    members: Sequence[tuple[str | bytes, float]],
    *,
    quiet: bool = False,
) -> None:
    """Change one user's set on its own with the ``INDEX`` script.

    *quiet* logs a failure instead of raising it: for removals, which
    :meth:`~wsgisession.stores.redis.RedisStore.user_records` makes up for when it
    reads the set.
    """
    args: list[str | bytes | int] = [repr(time.time()), op]
    for member, score in members:
        args += [member, repr(float(score))]
    try:
        store._run(redis_scripts.INDEX, [store._user_key(user_id)], args)
    except StoreError as exc:
        if not quiet:
            raise
        log.warning("could not %s sessions in a user's index in Redis: %s", op, exc)
