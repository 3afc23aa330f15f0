"""The Redis store's writes on Redis Cluster, as steps in the order that fails safe.

On a standalone server or a Sentinel master, each write of
:class:`~wsgisession.stores.redis.RedisStore` is one Lua script that changes the
session, the key it replaces and its user's sorted set together. On Redis Cluster
those keys live in different slots and no script may touch more than one, so a
script writes the session alone and separate commands do the rest:

- A regenerate, which names the version it replaces, deletes the old record (or
  leaves its tombstone there) before it writes the new one: a failure between the
  two logs the user out, and never leaves two live ids or loses a concurrent write.
  A save that replaces a key without naming its version writes first and deletes
  after, and a failure between the two leaves the old record to expire.
- A user's set changes after the session. A failed link raises
  :exc:`~wsgisession.StoreError`, and the session's next save or refresh links it
  again; a failed unlink leaves an entry that
  :meth:`~wsgisession.stores.redis.RedisStore.user_records` drops when it reads it,
  with :meth:`ClusterSteps.change_index`, on every deployment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .. import _clock
from ..errors import StoreError
from . import _redis_lua as lua
from . import _redis_scripts as scripts
from .base import Record

__all__ = ["ClusterSteps"]

log = logging.getLogger("wsgisession")


class ClusterSteps:
    """A store's writes that span slots, as one script per slot.

    :param run: Runs a script on the store's server.
    :param keys: The names of the store's keys.
    """

    __slots__ = ("_keys", "_run")

    def __init__(self, run: lua.Run, keys: scripts.Keys) -> None:
        self._run = run
        self._keys = keys

    def move(
        self,
        key: str,
        record: Record,
        expected_version: int | None,
        replaces: str,
        replaces_version: int,
        tombstone: Record | None,
        now: float,
    ) -> bool:
        """Save *record* under *key* in place of version *replaces_version* of *replaces*.

        First the old record is deleted (or overwritten by *tombstone*) if it is
        still live and of that version, by one compare-and-delete script; only then
        is the new one written. A concurrent write to the old key therefore makes
        this save fail rather than be lost, and a logout that deleted it is never
        undone. The caller has checked that the new key would take the save, so that
        one bound to fail there deletes nothing; only a writer of that same key
        racing this save (a regenerate's key is fresh, known to no one else) could
        still make the second step fail after the first.
        """
        taken = self._run(
            lua.DELETE,
            [self._keys.prefix + replaces],
            [
                repr(now),
                "",
                replaces,
                scripts.version_arg(replaces_version),
                *scripts.tombstone_args(tombstone, now),
            ],
        )
        if taken[0] != 1:
            return False
        gone = scripts.user_of(taken[1])
        try:
            saved, previous = self._save_alone(key, record, expected_version, now)
        finally:
            if gone is not None:
                self.change_index(gone, "unlink", [(replaces, 0.0)], quiet=True)
        if saved:
            self.after_save(key, record, previous, None)
        return saved

    def finish_move(
        self, key: str, moves_to: str, record: Record, gone: bytes | None
    ) -> Record | None:
        """Write *record* under *moves_to* once a locked save vacated *key*.

        The lock's script already deleted *key*, or left the tombstone there, after
        checking its lease and the version built on, and *gone* is the user that
        record had. As with :meth:`move`, a failure before this write loses the
        session rather than leave two live ids for it. Return *record*, or ``None``
        if *moves_to* turned out to hold a live record.
        """
        try:
            saved, previous = self._save_alone(moves_to, record, None, _clock.now())
        finally:
            if gone is not None:
                self.change_index(gone, "unlink", [(key, 0.0)], quiet=True)
        if not saved:
            log.warning("session %s: the key a locked save moved it to was taken", key[:8])
            return None
        self.after_save(moves_to, record, previous, None)
        return record

    def after_save(
        self,
        key: str,
        record: Record,
        previous: bytes | None,
        replaces: str | None,
        tombstone: Record | None = None,
    ) -> None:
        """Finish a save of *record* under *key* that its script has written.

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
                self.delete(replaces, tombstone)
            except StoreError as exc:
                failed = exc
        user_id = None if record.user_id is None else record.user_id.encode()
        if user_id is not None:
            self.change_index(user_id, "link", [(key, record.expires_at)])
        if previous is not None and previous != user_id:
            self.change_index(previous, "unlink", [(key, 0.0)], quiet=True)
        if failed is not None:
            raise failed

    def delete(self, key: str, tombstone: Record | None = None) -> bool:
        """Delete the record under *key*, or overwrite it with *tombstone*, then unlink it.

        Return ``True`` if a live record was there.
        """
        now = _clock.now()
        args: list[str | bytes | int] = [repr(now), "", key]
        if tombstone is not None:
            args += ["", *scripts.tombstone_args(tombstone, now)]
        result = self._run(lua.DELETE, [self._keys.prefix + key], args)
        user_id = scripts.user_of(result[1])
        if user_id is not None:
            self.change_index(user_id, "unlink", [(key, 0.0)], quiet=True)
        live: bool = result[0] == 1
        return live

    def change_index(
        self,
        user_id: str | bytes,
        op: str,
        members: Sequence[tuple[str | bytes, float]],
        *,
        quiet: bool = False,
    ) -> None:
        """Change one user's set on its own with the ``INDEX`` script.

        *quiet* logs a failure instead of raising it: for removals, which
        :meth:`~wsgisession.stores.redis.RedisStore.user_records` makes up for when
        it reads the set.
        """
        args: list[str | bytes | int] = [repr(_clock.now()), op]
        for member, score in members:
            args += [member, repr(float(score))]
        try:
            self._run(lua.INDEX, [self._keys.user(user_id)], args)
        except StoreError as exc:
            if not quiet:
                raise
            log.warning("could not %s sessions in a user's index in Redis: %s", op, exc)

    def _save_alone(
        self, key: str, record: Record, expected_version: int | None, now: float
    ) -> tuple[bool, bytes | None]:
        """Run ``SAVE`` for *record* under *key* alone, replacing nothing.

        Return whether it wrote, and the user id the record it overwrote had.
        """
        args: list[str | bytes | int] = [
            scripts.encode(record),
            scripts.version_arg(expected_version),
            repr(now),
            scripts.ttl_ms(record.expires_at, now),
            "",
        ]
        keys = [self._keys.prefix + key, self._keys.lock(key)]
        return scripts.save_answer(self._run(lua.SAVE, keys, args))
