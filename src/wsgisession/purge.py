"""The background purge of expired records, for stores without native expiry."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Final

from .errors import StoreError
from .stores.base import Store

__all__ = ["Purger", "purge_expired"]

log = logging.getLogger("wsgisession")

#: Records deleted per cleanup() call, so no purge holds a lock for long.
BATCH: Final = 1000
#: The share of its claimed interval a background purge may take. Past it, another
#: worker's claim may soon succeed: stopping leaves room for the batch under way.
_TURN: Final = 0.75


def purge_expired(
    store: Store,
    batch: int = BATCH,
    progress: Callable[[int], None] | None = None,
    *,
    enough: Callable[[], bool] | None = None,
) -> int:
    """Delete every expired record of *store*, *batch* at a time; return how many.

    *progress*, when given, is called with the running total after each full batch,
    that is only while more may remain, so a purge of less than a batch never calls it.
    *enough*, when given, is asked after each full batch too, and a true answer stops
    the purge there: what is left waits for the next one.
    """
    total = 0
    while True:
        removed = store.cleanup(limit=batch)
        total += removed
        if removed < batch:
            return total
        if progress is not None:
            progress(total)
        if enough is not None and enough():
            return total


class Purger:
    """Purge a store every *interval* seconds from a daemon thread.

    The thread starts with the first request, so each forked worker runs its own and
    a pre-forking parent none. Workers sharing the store take turns through
    :meth:`Store.claim_purge`, so only one purges per interval; a purge that would
    outlast its turn stops before the turn ends (as it does when the purger is
    stopped), and the next turn, in whichever worker, goes on with it.
    """

    def __init__(self, store: Store, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = False
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_thread(ref))

    def start(self) -> None:
        """Start the thread if this process has none yet."""
        with self._lock:
            if self.started:
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="wsgisession-purge", daemon=True
            )
            self._thread.start()
            self.started = True

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self.started = False

    def forget_thread(self) -> None:
        """Forget the purge thread, in a forked child: it inherits the state, not the thread.

        The next request of the child starts a thread of its own.
        """
        self.started = False
        self._thread = None
        self._lock = threading.Lock()

    def _run(self) -> None:
        # The first purge comes soon, so workers that are recycled often still purge;
        # the jitter keeps workers started together from asking at the same instant.
        delay = random.uniform(0, min(self._interval, 60.0))
        while not self._stop.wait(delay):
            try:
                if self._store.claim_purge(self._interval):
                    ends = time.monotonic() + self._interval * _TURN
                    removed = purge_expired(self._store, enough=partial(self._enough, ends))
                    log.info("purged %d expired session record(s)", removed)
            except StoreError as exc:
                log.warning("background purge failed, will retry: %s", exc)
            # Nobody waits on this thread to hear of a bug; keep purging and say so.
            except Exception:
                log.exception("background purge failed unexpectedly, will retry")
            delay = self._interval * random.uniform(0.9, 1.1)

    def _enough(self, ends: float) -> bool:
        return self._stop.is_set() or time.monotonic() >= ends


def _forget_thread(ref: weakref.ref[Purger]) -> None:
    purger = ref()
    if purger is not None:
        purger.forget_thread()
