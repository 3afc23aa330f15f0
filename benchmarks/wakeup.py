"""What a wait for the store does to the Python that runs right after it.

A request that waits on a socket gives the CPU away, and comes back to caches and
branch predictors that other work has used meanwhile: on some machines the same code
then runs several times slower than it does in a tight loop. ``bench.py``'s ratios
against the raw driver on Redis, memcached and PostgreSQL include this, since the
session's fixed work (the cookie check, the id's hash, opening the seal, decoding, the
response headers) runs right after the store's reply, while the raw driver's work
after it is a JSON decode.

This script measures it on the machine it runs on. Two requests that make no round
trip at all, wsgisession's read on the memory store (its whole fixed cost) and the raw
driver's read on the memory store (a dict lookup and a JSON decode), are timed alone,
and each right after a wait: a 100 µs sleep, a Redis ``GET`` and a memcached ``get``
of 2 KB. Each pair runs in short batches in an order shuffled every round, as
``bench.py`` runs its contenders; a request's cost after a wait is the batch's time
less the wait's alone in the same round, and the figures are medians over rounds. The
last column is the least wsgisession's read could be against the raw driver's on that
store, were its store work no more than the driver's::

    python benchmarks/wakeup.py [--rounds 40] [--redis-url URL] [--memcached-url URL]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from pymemcache.client.base import Client as MemcacheClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compare import Comparison
from _contenders import Backends, memcached_address
from _scenarios import SCENARIOS
from _timing import request

#: Calls of each kind in one batch.
BATCH = 50
#: The size of the value each round trip fetches: about a session's record.
VALUE = 2000

Work = Callable[[], object]


def _waits(args: argparse.Namespace) -> tuple[dict[str, Work], list[Work]]:
    """The waits to put before a request, by name, and how to clean up after them."""
    waits: dict[str, Work] = {"a 100 µs sleep": lambda: time.sleep(0.0001)}
    cleanups: list[Work] = []
    key = f"wsgisession_wakeup_{os.getpid()}_{secrets.token_hex(4)}"
    value = secrets.token_bytes(VALUE)
    try:
        client = redis.Redis.from_url(args.redis_url, socket_connect_timeout=2)
        client.set(key, value, ex=600)
    except redis.RedisError as exc:
        print(f"Redis left out: {type(exc).__name__}: {exc}", file=sys.stderr)
    else:
        waits["a Redis GET"] = lambda: client.get(key)
        cleanups += [lambda: client.delete(key), client.close]
    try:
        memcached = MemcacheClient(
            memcached_address(args.memcached_url), connect_timeout=2, timeout=2
        )
        memcached.set(key, value, expire=600, noreply=False)
    except Exception as exc:
        print(f"memcached left out: {type(exc).__name__}: {exc}", file=sys.stderr)
    else:
        waits["a memcached get"] = lambda: memcached.get(key)
        cleanups += [lambda: memcached.delete(key, noreply=False), memcached.close]
    return waits, cleanups


def _batch(work: Work) -> float:
    """Microseconds per call of *work* over one batch."""
    start = time.perf_counter()
    for _ in range(BATCH):
        work()
    return (time.perf_counter() - start) / BATCH * 1e6


def _after(wait: Work, work: Work) -> Work:
    return lambda: (wait(), work())


Medians = dict[tuple[str, str], float]


def measure(waits: dict[str, Work], requests: dict[str, Work], rounds: int) -> Medians:
    """Time each request alone and after each wait; return medians over *rounds*,
    keyed by (wait, request), ``""`` standing for no wait or no request."""
    timed: dict[tuple[str, str], Work] = {("", name): work for name, work in requests.items()}
    for wait_name, wait in waits.items():
        timed[(wait_name, "")] = wait
        for name, work in requests.items():
            timed[(wait_name, name)] = _after(wait, work)
    order = list(timed)
    for key in order:  # connections open, code warm
        _batch(timed[key])
    per_round: dict[tuple[str, str], list[float]] = {key: [] for key in order}
    for _ in range(rounds):
        random.shuffle(order)
        seen = {key: _batch(timed[key]) for key in order}
        for wait_name, name in timed:
            if wait_name and name:
                # The request's own cost after the wait: less the wait's, this round.
                per_round[(wait_name, name)].append(
                    seen[(wait_name, name)] - seen[(wait_name, "")]
                )
            else:
                per_round[(wait_name, name)].append(seen[(wait_name, name)])
    return {key: statistics.median(values) for key, values in per_round.items()}


def report(medians: Medians, waits: list[str]) -> str:
    """The Markdown table of *medians*."""
    lines = [
        "µs per request, medians over rounds: each request alone, and right after the wait"
        " (the batch's time less the wait's alone, in the same round).",
        "",
        "| before the request | the wait alone | wsgisession read | × alone | raw read"
        " | × alone | wsgisession ÷ raw, wait included |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    alone_ws, alone_raw = medians[("", "wsgisession")], medians[("", "raw")]
    lines.append(f"| nothing | – | {alone_ws:.1f} | 1.00× | {alone_raw:.1f} | 1.00× | – |")
    for wait in waits:
        gap = medians[(wait, "")]
        ws, raw = medians[(wait, "wsgisession")], medians[(wait, "raw")]
        lines.append(
            f"| {wait} | {gap:.1f} | {ws:.1f} | {ws / alone_ws:.2f}× | {raw:.1f}"
            f" | {raw / alone_raw:.2f}× | {(gap + ws) / (gap + raw):.2f}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="shuffled rounds (40)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--memcached-url", default="memcached://127.0.0.1:11211")
    args = parser.parse_args(argv)
    backends = Backends(
        Path(tempfile.mkdtemp(prefix="wsgisession-wakeup-")),
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",  # the memory store needs none
        args.redis_url,
        f"wsgisession_wakeup_{os.getpid()}",
        args.memcached_url,
    )
    waits, cleanups = _waits(args)
    try:
        comparison = Comparison("memory", backends)
        scenario = SCENARIOS["read"]
        requests = {
            name: request(comparison.built[name].app, comparison.environ(built, scenario))
            for name, built in comparison.built.items()
            if name in ("wsgisession", "raw")
        }
        medians = measure(waits, requests, args.rounds)
    finally:
        for cleanup in cleanups:
            cleanup()
        backends.cleanup()
    print(report(medians, list(waits)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
