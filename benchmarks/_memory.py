"""Memory: what live sessions cost the memory store, and whether a warm process grows.

Both are measured with :mod:`tracemalloc`, which sees every Python allocation, so the
figures include everything the middleware keeps (records, keys, the store's dict,
metrics), not only the serialized data.
"""

from __future__ import annotations

import gc
import resource
import timeit
import tracemalloc
from typing import Any

from _contenders import Backends, _environ_session, seed_through, ws_middleware
from _scenarios import OTHER_COOKIES, SCENARIOS, cart, handler
from _timing import base_environ, run

from wsgisession.events import Metrics


def live_sessions_memory(b: Backends, count: int, size: int) -> dict[str, Any]:
    """Bytes the memory store holds for *count* sessions of about *size* serialized bytes."""
    mw = ws_middleware(handler(_environ_session), "memory", b, name="memory")
    seed = seed_through(mw, "session_id")
    data = {"user": "u-1", "n": 0, "cart": cart(size - 40)}
    seed(data)  # warm: imports, caches, the first metrics samples
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(count):
        seed(data)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    store: Any = mw.store
    records = list(store._records.values())
    serialized = sum(len(record.data) for record in records[1:])
    return {
        "sessions": count,
        "serialized_bytes": serialized,
        "mean_serialized": serialized / count,
        "held_bytes": grown,
        "ratio": grown / serialized,
    }


def steady_state(b: Backends, sessions: int, warm: int, requests: int) -> dict[str, Any]:
    """Traced memory before and after *requests* reads and writes on a fixed set."""
    mw = ws_middleware(handler(_environ_session), "memory", b, name="steady")
    seed = seed_through(mw, "session_id")
    environs = []
    for i in range(sessions):
        cookie = seed({"user": f"u-{i}", "n": 0})
        name = "write" if i % 2 else "read"
        environs.append(
            base_environ(
                HTTP_COOKIE=f"{OTHER_COOKIES}; {cookie}",
                **{"bench.action": SCENARIOS[name].action, "bench.scenario": name},
            )
        )
    tracemalloc.start()
    run(mw, environs, warm)
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(mw, environs, requests)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.stop()
    return {
        "sessions": sessions,
        "warm_requests": warm,
        "requests": requests,
        "traced_before": before,
        "traced_after": after,
        "growth_bytes": after - before,
        "max_rss_growth_kib": rss_after - rss_before,
    }


def metrics_cost(b: Backends, untouched: int) -> dict[str, Any]:
    """What the metrics cost: nothing on untouched requests, a few locks on touched ones."""
    mw = ws_middleware(handler(_environ_session), "memory", b, name="metrics")
    cookie = seed_through(mw, "session_id")({"user": "u-1"})
    start = mw.metrics()["requests"]
    environ = base_environ(
        HTTP_COOKIE=f"{OTHER_COOKIES}; {cookie}",
        **{"bench.action": SCENARIOS["untouched"].action, "bench.scenario": "untouched"},
    )
    run(mw, environ, untouched)
    counted = mw.metrics()["requests"] - start
    metrics = Metrics()  # the middleware's own kind, measured alone
    # A touched read counts "requests" and "loads" and records one store latency.
    number = 200_000
    seconds = min(
        timeit.repeat(
            "count('requests'); count('loads'); observe(0.0001)",
            globals={"count": metrics.count, "observe": metrics.observe},
            number=number,
            repeat=5,
        )
    )
    return {
        "untouched_requests": untouched,
        "untouched_counted": counted,
        "touched_read_metrics_seconds": seconds / number,
    }
