"""Expose a middleware's counters and store latency to Prometheus.

Needs the ``prometheus`` extra (``pip install -e '.[prometheus]'`` in a clone)::

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

    def describe(self) -> Iterator[Metric]:
        """Yield the metrics' names and kinds with no samples.

        A registry reads them when the collector is registered, and so refuses a
        second collector under the same names, which would repeat every series in a
        scrape.
        """
        for name in COUNTERS:
            yield CounterMetricFamily(f"{self._namespace}_{name}", _HELP[name])
        yield self._histogram()

    def collect(self) -> Iterator[Metric]:
        """Yield the counters and the latency histogram as they are now."""
        snapshot = self._middleware.metrics()
        for name in COUNTERS:
            family = CounterMetricFamily(f"{self._namespace}_{name}", _HELP[name])
            family.add_metric([], snapshot[name])
            yield family
        buckets, total, _ = self._middleware.store_latency_histogram()
        histogram = self._histogram()
        histogram.add_metric([], [(_bound(le), count) for le, count in buckets], sum_value=total)
        yield histogram

    def _histogram(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            f"{self._namespace}_store_latency_seconds",
            "Time taken by session store operations.",
        )


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def register(
    middleware: SessionMiddleware,
    registry: CollectorRegistry | None = None,
    *,
    namespace: str = "wsgisession",
) -> SessionCollector:
    """Register *middleware*'s metrics with *registry* (the default one if ``None``).

    Each middleware of a process that has its own metrics needs its own *namespace*,
    the metrics' name prefix.

    :raises ValueError: *registry* has metrics under *namespace* already (this
        middleware's or another's).
    """
    collector = SessionCollector(middleware, namespace)
    try:
        (REGISTRY if registry is None else registry).register(collector)
    except ValueError as exc:
        raise ValueError(
            f"the registry has metrics named {namespace}_* already: register each "
            "middleware once, and another middleware under a namespace of its own "
            f"(register(middleware, namespace=...)); {exc}"
        ) from exc
    return collector
