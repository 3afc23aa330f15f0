"""What the middleware tells listeners and metrics: events, counters, store latency."""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import logging
import operator
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

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
# How long a queue of counts or latencies may grow before a request folds it.
_FOLD_AT: Final = 1024

_T = TypeVar("_T")


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
    third of taking a lock; the queues are folded into the totals under the lock by
    whoever reads them, or by the request that finds one :data:`_FOLD_AT` long. Counts
    of one, the usual kind, are queued as the counter's name alone, and each fold runs
    in C: the queues are drained, tallied and summed without a Python step per item.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self._counts["lock_wait_seconds"] = 0.0
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._latency_count = 0
        self._samples: collections.deque[float] = collections.deque(maxlen=_RESERVOIR)
        # Counts of one, by name; other amounts as (name, amount); store latencies.
        self._ones: collections.deque[str] = collections.deque()
        self._amounts: collections.deque[tuple[str, float]] = collections.deque()
        self._latencies: collections.deque[float] = collections.deque()

    def count(self, name: str, amount: float = 1) -> None:
        """Add *amount* to the counter *name*."""
        if name not in self._counts:
            raise KeyError(f"unknown counter {name!r}")
        if amount == 1:
            ones = self._ones
            ones.append(name)
            if len(ones) > _FOLD_AT:
                self._fold()
        else:
            amounts = self._amounts
            amounts.append((name, amount))
            if len(amounts) > _FOLD_AT:
                self._fold()

    def observe(self, seconds: float) -> None:
        """Record one store operation that took *seconds*."""
        latencies = self._latencies
        latencies.append(seconds)
        if len(latencies) > _FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        """Move what the queues hold into the totals; the lock must not be held."""
        with self._lock:
            counts = self._counts
            for name, times in collections.Counter(_drain(self._ones)).items():
                counts[name] += times
            for name, amount in _drain(self._amounts):
                counts[name] += amount
            latencies = _drain(self._latencies)
            if not latencies:
                return
            # Added in the order observed, as one += after another would.
            self._latency_sum = functools.reduce(operator.add, latencies, self._latency_sum)
            self._latency_count += len(latencies)
            self._samples.extend(latencies)
            # Bucket i holds the latencies above bound i - 1, up to bound i inclusive.
            ordered = sorted(latencies)
            below = 0
            for index, bound in enumerate(LATENCY_BUCKETS):
                upto = bisect.bisect_right(ordered, bound)
                self._buckets[index] += upto - below
                below = upto
            self._buckets[-1] += len(ordered) - below

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


def _drain(queue: collections.deque[_T]) -> list[_T]:
    """Pop what *queue* holds now from its left, in C; appends meanwhile wait."""
    return list(itertools.starmap(queue.popleft, itertools.repeat((), len(queue))))


def _percentile(sorted_samples: list[float], fraction: float) -> float | None:
    if not sorted_samples:
        return None
    index = min(len(sorted_samples) - 1, int(fraction * len(sorted_samples)))
    return sorted_samples[index]
