"""Expose a middleware's counters and store latency to Prometheus.

Needs the ``prometheus`` extra (``pip install 'wsgisession[prometheus]'``)::

    from wsgisession.prometheus import register
    register(middleware)          # prometheus_client's default registry
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .events import COUNTERS

if TYPE_CHECKING:
    from .middleware import SessionMiddleware

__all__ = ["SessionCollector", "register"]

_HELP = {
    "requests": "Requests that touched their session.",
    "loads": "Session records read from the store.",
    "saves": "Session records written to the store.",
    "refreshes": "Session expiries extended without rewriting the data.",
    "conflicts": "Saves that met a concurrent save and were merged.",
    "expired": "Requests whose cookie named an expired or ended session.",
    "corrupt": "Stored records that could not be decoded.",
    "store_errors": "Store operations that failed.",
    "locked_saves": "Saves that lost a race to a concurrent one and took the session's lock.",
    "lock_wait_seconds": "Time locked saves spent, from taking the fallback to the write.",
}


class SessionCollector(Collector):
    """A collector reading a :class:`SessionMiddleware`'s metrics at scrape time.

    Counters are named ``wsgisession_<name>_total``; store latency is the histogram
    ``wsgisession_store_latency_seconds``.
    """

    def __init__(self, middleware: SessionMiddleware, namespace: str = "wsgisession") -> None:
        self._middleware = middleware
        self._namespace = namespace

    def collect(self) -> Iterator[Metric]:
        """Yield the counters and the latency histogram as they are now."""
        snapshot = self._middleware.metrics()
        for name in COUNTERS:
            family = CounterMetricFamily(f"{self._namespace}_{name}", _HELP[name])
            family.add_metric([], snapshot[name])
            yield family
        buckets, total, _ = self._middleware.store_latency_histogram()
        histogram = HistogramMetricFamily(
            f"{self._namespace}_store_latency_seconds",
            "Time taken by session store operations.",
        )
        histogram.add_metric([], [(_bound(le), count) for le, count in buckets], sum_value=total)
        yield histogram


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def register(
    middleware: SessionMiddleware, registry: CollectorRegistry | None = None
) -> SessionCollector:
    """Register *middleware*'s metrics with *registry* (the default one if ``None``)."""
    collector = SessionCollector(middleware)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
