"""The holder's side of a Redis session's save lock: build, write, let go.

:meth:`~wsgisession.stores.redis.RedisStore.save_locked` waits for the lock with
:class:`~wsgisession.stores._redis_lock.SaveLock`; once it is this caller's,
:class:`LockedWrite` builds the new record on the session as the lock found it and
writes it with the ``LOCKED`` script (:mod:`~wsgisession.stores._redis_lua`), which
checks the lease and the version built on and hands the lock to the next waiter as it
writes. On Redis Cluster the key a regenerate moves to and the user's set change in
steps of their own (:mod:`~wsgisession.stores._redis_cluster`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .. import _clock
from . import _redis_lua as lua
from . import _redis_reads as reads
from . import _redis_scripts as scripts
from ._redis_cluster import ClusterSteps
from ._redis_lock import SaveLock
from .base import Record

__all__ = ["LockedWrite"]

log = logging.getLogger("wsgisession")

#: Whether a save of a key expecting a version would pass its check at a time.
MayWrite = Callable[[str, int | None, float], bool]


class LockedWrite:
    """One locked save's writes, as the holder of the session's save lock.

    :param run: Runs a script on the store's server.
    :param keys: The names of the store's keys.
    :param cluster: Whether the server is a Redis Cluster.
    :param may_write: Checks, on Redis Cluster, that the key a save moves to is free.
    """

    __slots__ = ("_cluster", "_keys", "_may_write", "_run")

    def __init__(
        self, run: lua.Run, keys: scripts.Keys, *, cluster: bool, may_write: MayWrite
    ) -> None:
        self._run = run
        self._keys = keys
        self._cluster = cluster
        self._may_write = may_write

    def hold(
        self,
        lock: SaveLock,
        key: str,
        value: bytes | None,
        build: Callable[[Record], Record | None],
        target: str | None,
        tombstone: Record | None,
    ) -> tuple[bool, Record | None]:
        """Build and write as the lock's holder, and see that the lock is let go.

        *value* is the session's string as the lock was taken. Return ``(True, what
        save_locked returns)``, or ``(False, None)`` if the lease ran out first and
        the caller must start over.
        """
        cluster = self._cluster
        held = True
        try:
            while True:
                current = reads.decode_quietly(key, value)
                if current is None or current.expires_at <= _clock.now():
                    return True, None
                record = build(current)
                if record is None:
                    return True, None
                if (
                    target is not None
                    and cluster
                    and not self._may_write(target, None, _clock.now())
                ):
                    log.warning("session %s: the key a locked save moves to is taken", key[:8])
                    return True, None
                result = self._write(lock, current, record, key, target, tombstone)
                if result[0] == 2:  # a regenerate replaced it meanwhile: build on that
                    value = result[1] or None
                    continue
                held = False  # the script handed the lock over, or it was not ours
                if result[0] == -1:
                    return False, None
                if result[0] == 3:
                    log.warning("session %s: the key a locked save moves to is taken", key[:8])
                if result[0] != 1:
                    return True, None
                if not cluster:
                    return True, record
                steps = ClusterSteps(self._run, self._keys)
                if target is not None:
                    return True, steps.finish_move(key, target, record, scripts.user_of(result[1]))
                steps.after_save(key, record, scripts.user_of(result[1]), None)
                return True, record
        except BaseException:
            if held:
                held = False
                # What failed (build's exception, say) goes out unchanged.
                lock.release(quiet=True)
            raise
        finally:
            if held:
                lock.release()

    def _write(
        self,
        lock: SaveLock,
        current: Record,
        record: Record,
        key: str,
        target: str | None,
        tombstone: Record | None,
    ) -> Any:
        now = _clock.now()
        cluster = self._cluster
        keys = lock.keys
        if target is not None and not cluster:
            keys = [*keys, self._keys.prefix + target]
        args: list[str | bytes | int] = [
            lock.token,
            lock.lease_ms,
            scripts.version_arg(current.version),
            repr(now),
            scripts.ttl_ms(record.expires_at, now),
            "" if cluster else self._keys.index,
            key,
            target or "",
            *scripts.tombstone_args(tombstone, now),
            scripts.encode(record),
        ]
        return self._run(lua.LOCKED, keys, args)
