"""What the middleware tells listeners and metrics: events, counters, store latency."""

from __future__ import annotations

import bisect
import collections
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ["EventName", "Metrics", "SessionEvent"]

log = logging.getLogger("wsgisession")

EventName = Literal[
    "created",
    "saved",
    "refreshed",
    "conflict",
    "expired",
    "invalidated",
    "regenerated",
    "corrupt",
    "store_error",
]


#: The counters :meth:`Metrics.snapshot` reports.
COUNTERS: Final = (
    "requests",
    "loads",
    "saves",
    "refreshes",
    "conflicts",
    "expired",
    "corrupt",
    "store_errors",
    "locked_saves",
    "lock_wait_seconds",
)

#: Upper bounds, in seconds, of the store latency histogram's buckets.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

# Percentiles come from the latest samples, so a burst long ago doesn't mask today.
_RESERVOIR: Final = 4096
# How long the queue of counts and latencies may grow before a request folds it.
_FOLD_AT: Final = 1024


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """Something that happened to a session, as listeners receive it.

    It names the session by its ``handle`` (``None`` where no session is known), never
    by its id, and carries none of its data.
    """

    name: EventName
    handle: str | None
    #: Unix time of the event, from the application's clock.
    time: float


def notify(listeners: Sequence[Callable[[SessionEvent], object]], event: SessionEvent) -> None:
    """Call every listener with *event*; one that raises is logged and skipped."""
    for listener in listeners:
        try:
            listener(event)
        # A listener is the application's code; its failure must not fail the request.
        except Exception:
            log.exception("session event listener %r failed on %r", listener, event.name)


class Metrics:
    """Counters and store latency since the middleware started; safe across threads.

    A request only appends to a queue (a deque's ``append`` is atomic), which costs a
    third of taking a lock; the queue is folded into the totals under the lock by
    whoever reads them, or by the request that finds it :data:`_FOLD_AT` long.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self._counts["lock_wait_seconds"] = 0.0
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._latency_count = 0
        self._samples: collections.deque[float] = collections.deque(maxlen=_RESERVOIR)
        # A counter as (name, amount), a store operation's latency as a float.
        self._queue: collections.deque[tuple[str, float] | float] = collections.deque()

    def count(self, name: str, amount: float = 1) -> None:
        """Add *amount* to the counter *name*."""
        if name not in self._counts:
            raise KeyError(f"unknown counter {name!r}")
        queue = self._queue
        queue.append((name, amount))
        if len(queue) > _FOLD_AT:
            self._fold()

    def observe(self, seconds: float) -> None:
        """Record one store operation that took *seconds*."""
        queue = self._queue
        queue.append(seconds)
        if len(queue) > _FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        """Move what the queue holds into the totals; the lock must not be held."""
        with self._lock:
            queue, counts = self._queue, self._counts
            # Only what is queued now: requests may append meanwhile, and wait for
            # the next fold.
            for _ in range(len(queue)):
                item = queue.popleft()
                if isinstance(item, tuple):
                    name, amount = item
                    counts[name] += amount
                else:
                    self._buckets[bisect.bisect_left(LATENCY_BUCKETS, item)] += 1
                    self._latency_sum += item
                    self._latency_count += 1
                    self._samples.append(item)

    def snapshot(self) -> dict[str, Any]:
        """Return the counters and ``store_latency`` (count, sum, p50, p99 in seconds)."""
        self._fold()
        with self._lock:
            counts = dict(self._counts)
            samples = sorted(self._samples)
            latency_sum, latency_count = self._latency_sum, self._latency_count
        result: dict[str, Any] = dict(counts)
        result["store_latency"] = {
            "count": latency_count,
            "sum": latency_sum,
            "p50": _percentile(samples, 0.50),
            "p99": _percentile(samples, 0.99),
        }
        return result

    def histogram(self) -> tuple[list[tuple[float, int]], float, int]:
        """Return cumulative ``(upper bound, count)`` buckets, the sum and the count.

        The last bucket's bound is ``float("inf")``, as Prometheus expects.
        """
        self._fold()
        with self._lock:
            buckets = list(self._buckets)
            total, count = self._latency_sum, self._latency_count
        cumulative, running = [], 0
        for bound, amount in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
            running += amount
            cumulative.append((bound, running))
        return cumulative, total, count


def _percentile(sorted_samples: list[float], fraction: float) -> float | None:
    if not sorted_samples:
        return None
    index = min(len(sorted_samples) - 1, int(fraction * len(sorted_samples)))
    return sorted_samples[index]
