"""One connection per thread, kept out of a driver's pool for a store's request path.

The Redis and memcached stores send their request path's commands on a connection
they keep checked out of the driver's pool for each thread (see
:mod:`~wsgisession.stores._redis_direct` and
:mod:`~wsgisession.stores._memcached_direct`). :class:`PerThread` keeps those
connections: each thread's in a :class:`Slot` of its own, given back to the pool when
the thread ends (its thread-local storage goes, and the slot with it) and by
:meth:`PerThread.release`, once the command under way on it is done. A forked child
never touches its parent's connections or locks: it starts afresh, and never gives
back a connection its parent took.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["IDLE", "PerThread", "Slot"]

#: Seconds a connection may sit idle before its next command checks it first: the
#: server, or a proxy, may have closed it meanwhile.
IDLE = 1.0


class Slot:
    """One thread's connection, kept out of the pool while the thread lives.

    :param give: Gives a connection back to the pool it came from.
    """

    __slots__ = ("__weakref__", "_give", "connection", "lock", "pid", "reconnect", "used")

    def __init__(self, give: Callable[[Any], object]) -> None:
        self._give = give
        self.pid = os.getpid()
        #: Taken by its thread around each command, without waiting: a command sent
        #: while one is under way (from a signal handler, say) goes through the
        #: driver's own layer; and by :meth:`PerThread.release`, which waits for it.
        self.lock = threading.Lock()
        #: The connection, or ``None`` until the thread's next command takes one.
        self.connection: Any = None
        #: Whether the server asked the connection to reconnect, where the driver
        #: tells (redis-py's maintenance notices).
        self.reconnect: Callable[[], bool] | None = None
        #: When the connection last finished a command: ``time.monotonic()``.
        self.used = 0.0

    def idle(self) -> bool:
        """Whether the connection has sat idle longer than :data:`IDLE`."""
        return time.monotonic() - self.used > IDLE

    def give_back(self) -> None:
        """Give the connection back to the pool, in the process that took it."""
        connection, self.connection = self.connection, None
        if connection is not None and self.pid == os.getpid():
            self._give(connection)

    def __del__(self) -> None:
        # The thread ended: its connection goes back to the pool, for the next thread.
        with contextlib.suppress(Exception):
            self.give_back()


class PerThread:
    """The slots of the threads that send a store's commands through one pool.

    :param give: Gives a connection back to the pool it came from.
    """

    __slots__ = ("_give", "_guard", "_local", "_pid", "_slots")

    def __init__(self, give: Callable[[Any], object]) -> None:
        self._give = give
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        # Every live thread's slot, for release(); a thread that ends drops its own.
        self._slots: weakref.WeakSet[Slot] = weakref.WeakSet()
        self._guard = threading.Lock()

    def slot(self) -> Slot:
        """This thread's slot (a forked child's first call starts afresh)."""
        if self._pid != os.getpid():
            self._start()  # a forked child: the parent's connections stay the parent's
        try:
            slot: Slot = self._local.slot
        except AttributeError:
            slot = self._local.slot = Slot(self._give)
            with self._guard:
                self._slots.add(slot)
        return slot

    def release(self) -> None:
        """Give every thread's connection back to the pool, each once its command is
        done; a thread's next command takes another."""
        if self._pid != os.getpid():
            self._start()
            return
        with self._guard:
            slots = list(self._slots)
        for slot in slots:
            with slot.lock:
                slot.give_back()
