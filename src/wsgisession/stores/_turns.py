"""First come, first served: per-key locks that hand over to waiters in arrival order."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Turns"]


class Turns:
    """Locks by key that serve the threads of this process in the order they asked.

    A plain :class:`threading.Lock`, ``flock`` or SQLite's busy handler lets a
    newcomer take a lock that a long waiter was about to get, so under steady
    contention one waiter can lose every time. Here a released lock goes straight to
    the oldest waiter. A key's entry exists only while its lock is held, so the
    table never outgrows the keys in use.
    """

    __slots__ = ("_mutex", "_waiting")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        # key -> the events of the threads waiting for it; present while it is held.
        self._waiting: dict[str, deque[threading.Event]] = {}

    @contextmanager
    def hold(self, key: str, timeout: float) -> Iterator[bool]:
        """Hold *key*'s lock for the block, waiting at most *timeout* seconds for it.

        Yields whether the lock was taken; the block runs either way, so the caller
        decides what a timeout means.
        """
        taken = self._acquire(key, timeout)
        try:
            yield taken
        finally:
            if taken:
                self._release(key)

    def _acquire(self, key: str, timeout: float) -> bool:
        with self._mutex:
            queue = self._waiting.get(key)
            if queue is None:
                self._waiting[key] = deque()
                return True
            turn = threading.Event()
            queue.append(turn)
        if turn.wait(max(timeout, 0.0)):
            return True
        with self._mutex:
            if turn.is_set():  # handed over just as the wait ran out
                return True
            queue.remove(turn)
            return False

    def _release(self, key: str) -> None:
        with self._mutex:
            queue = self._waiting[key]
            if queue:
                # The lock passes to the oldest waiter without ever being free.
                queue.popleft().set()
            else:
                del self._waiting[key]
