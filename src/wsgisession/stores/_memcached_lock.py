"""A session's save lock in memcached: a lease taken with ``add``, waited for by polling.

Private to :mod:`wsgisession.stores.memcached`. The lock is a key beside the
session's, ``<prefix>l:<key>``, on the session's own server, holding the holder's
random token for a lease of :data:`LEASE` seconds: ``add`` succeeds for one caller
only, and a holder that dies frees the lock when its lease runs out. Memcached has no
blocking reads, so a caller that finds the lock taken polls for it, with a jittered
pause that doubles up to :data:`LONGEST_PAUSE`; unlike the Redis store's line, the
waiters are not served in the order they asked. A holder lets go with a
compare-and-set on the lock's own cas token, so it never frees a lock that has
become someone else's since its lease ran out.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Final

from ..errors import StoreError

__all__ = ["LEASE", "LONGEST_PAUSE", "SaveLock"]

log = logging.getLogger("wsgisession")

#: Seconds a holder keeps the lock: one load, merge and write take far less, and this
#: is what the waiters lose when a holder dies.
LEASE: Final = 5
#: The longest pause between two looks at a taken lock.
LONGEST_PAUSE: Final = 0.05
_FIRST_PAUSE: Final = 0.002


class SaveLock:
    """One caller's claim on a session's save lock.

    :param client: The client of the session's server.
    :param name: The lock's key.
    :param errors: Translates the driver's errors into :exc:`~wsgisession.StoreError`.
    """

    __slots__ = ("_client", "_errors", "name", "taken_at", "token")

    def __init__(
        self, client: Any, name: str, errors: Callable[[], AbstractContextManager[None]]
    ) -> None:
        self._client = client
        self._errors = errors
        #: The lock's key.
        self.name = name
        #: What the lock holds while it is this caller's; a new one for each take.
        self.token = b""
        #: When it was last taken, by :func:`time.monotonic`.
        self.taken_at = 0.0

    def take(self, deadline: float) -> bool:
        """Take the lock, polling until *deadline*, a :func:`time.monotonic`.

        Return ``False`` once *deadline* passed without it.
        """
        self.token = secrets.token_hex(8).encode()
        pause = _FIRST_PAUSE
        while True:
            with self._errors():
                if self._client.add(self.name, self.token, expire=LEASE, noreply=False):
                    self.taken_at = time.monotonic()
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(random.uniform(pause / 2, pause), left))
            pause = min(pause * 2, LONGEST_PAUSE)

    def held(self, value: bytes | None) -> bool:
        """Whether the lock, read as *value*, is still this caller's."""
        return value == self.token

    def release(self, lock_cas: bytes | None, *, quiet: bool = False) -> None:
        """Let go of the lock if it is still this caller's.

        *lock_cas* is the lock's cas token as read while held, or ``None`` to read it
        now. *quiet* logs a failure instead of raising it: the lease runs out anyway.
        """
        try:
            with self._errors():
                if lock_cas is None:
                    value, lock_cas = self._client.gets(self.name)
                    if value != self.token:
                        return
                # Stored already expired: a delete that only happens if the cas matches.
                self._client.cas(self.name, b"", lock_cas, expire=-1, noreply=False)
        except StoreError as exc:
            if not quiet:
                raise
            log.warning("could not let go of a session's save lock in memcached: %s", exc)
