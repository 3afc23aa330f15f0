"""A caller's turn at a Redis session's save lock: the lease, the line, the baton.

:meth:`~wsgisession.stores.redis.RedisStore.save_locked` holds a lock key beside the
session's, holding its random token with a lease; callers that find it taken join a
line and are handed the lock in the order they asked, each woken by a ``BLPOP`` on
its own baton. The keys, and the scripts that take the lock, hand it on and let it
go, are described in :mod:`~wsgisession.stores._redis_lua`. Here is the
caller's side: how long a lease lasts, how long a waiter blocks before it looks for
a holder that died, and the loop that waits its turn.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Final, TypeAlias

from ..errors import StoreError
from ._redis_lua import RELEASE, TAKE, Run

__all__ = ["SaveLock", "Wait", "poll_interval"]

log = logging.getLogger("wsgisession")

#: Blocks with ``BLPOP`` on one key for at most the seconds given; raises
#: :exc:`~wsgisession.StoreError` when the server fails.
Wait: TypeAlias = Callable[[str, float], None]

# How long a save lock is a holder's: it only has to outlast one load, merge and
# write, and is what the waiters lose when a holder dies.
_LEASE: Final = 5.0
# How long a waiter blocks at a time before it looks for a holder that died.
_POLL: Final = 1.0
# BLPOP reads a timeout that rounds to 0 ms as "block forever".
_SHORTEST_BLOCK: Final = 0.01
# The line outlives its last waiter's last look this long.
_LINE_TTL: Final = _LEASE + 2 * _POLL


def poll_interval(socket_timeout: float | None) -> float:
    """Return how long a waiter blocks at a time on a client with *socket_timeout*.

    At most half the socket timeout, so that a block never reads as a dead
    connection.
    """
    return min(_POLL, socket_timeout / 2) if socket_timeout else _POLL


class SaveLock:
    """One caller's claim on a session's save lock, taken in turn.

    :param run: Runs the lock's scripts on the store's server.
    :param wait: Blocks on this caller's baton.
    :param session: The session's key, with the store's prefix.
    :param lock: The lock's key, whose hash tag puts it in the session's slot.
    :param poll: How long a waiter blocks at a time, from :func:`poll_interval`.
    """

    __slots__ = ("_poll", "_run", "_wait", "keys", "token")

    def __init__(self, run: Run, wait: Wait, session: str, lock: str, *, poll: float) -> None:
        self._run = run
        self._wait = wait
        self._poll = poll
        #: The session, its lock and its line, as the lock's scripts take them.
        self.keys = [session, lock, lock + ":q"]
        #: What the lock holds while it is this caller's; a new one for each turn.
        self.token = ""

    @property
    def lease_ms(self) -> int:
        """The lease in milliseconds, as the scripts that hand the lock on take it."""
        return _ms(_LEASE)

    def take(self, deadline: float) -> tuple[bool, bytes | None]:
        """Take the lock, waiting in line until *deadline*, a :func:`time.monotonic`.

        Return ``(True, the session's value as the lock was taken)``, or
        ``(False, None)`` once *deadline* passed, out of the line. Each call joins at
        the back with a new token: a holder whose lease ran out starts over.

        :raises StoreError: The server failed; the caller left the line if the
            server still answers, rather than be handed the lock later and hold the
            line up for a lease.
        """
        self.token = secrets.token_hex(8)
        baton = self._baton()
        args: list[str | bytes | int] = [self.token, self.lease_ms, _ms(_LINE_TTL), ""]
        try:
            while True:
                result = self._run(TAKE, [*self.keys, baton], args)
                if result[0] == 1:
                    value: bytes | None = result[1] or None
                    return True, value
                if args[3]:
                    return False, None  # out of the line, which the script left
                left = deadline - time.monotonic()
                if left <= 0:
                    args[3] = "1"  # one last look, leaving the line unless it is ours now
                    continue
                # The baton wakes it when the lock is handed over; the timeout, to look
                # for a holder whose lease ran out.
                self._wait(baton, max(min(self._poll, left), _SHORTEST_BLOCK))
        except StoreError:
            self.release(quiet=True)
            raise

    def release(self, *, quiet: bool = False) -> None:
        """Hand the lock on if this caller holds it, or leave its line.

        *quiet* logs a failure instead of raising it: the lease runs out anyway.
        """
        try:
            self._run(RELEASE, [*self.keys[1:], self._baton()], [self.token, self.lease_ms])
        except StoreError as exc:
            if not quiet:
                raise
            log.warning("could not let go of a session's save lock in Redis: %s", exc)

    def _baton(self) -> str:
        return f"{self.keys[1]}:{self.token}"


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
