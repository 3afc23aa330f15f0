"""Benchmark wsgisession against its peers, the pass-through limit and the raw drivers.

Run by hand, never as a test::

    pip install -e '.[bench]'
    python benchmarks/bench.py             # the full run, five to twelve minutes
    python benchmarks/bench.py --quick     # a smoke run of a minute or two

It needs PostgreSQL, Redis and memcached on loopback (``--pg-url``, ``--redis-url``,
``--memcached-url``; a store that can't be reached is left out and the report says so).
It writes ``results.md``, ``results.json`` and PNG charts to ``benchmarks/results/``.
Everything it creates (tables, Redis and memcached keys under a prefix unique to the
run, temp directories) is removed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
import sqlalchemy as sa
from _compare import Comparison
from _contenders import STORES, Backends, memcached_address
from _report import (
    cell_figures,
    charts,
    check_targets,
    markdown,
    readme_section,
    write_json,
)
from _scenarios import SCENARIOS
from pymemcache.client.base import Client as MemcacheClient

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = (
    "wsgisession",
    "beaker",
    "flask",
    "flask-session",
    "cachelib",
    "flask-sqlalchemy",
    "werkzeug",
    "itsdangerous",
    "redis",
    "pymemcache",
    "sqlalchemy",
    "psycopg",
)
_STARTED = time.perf_counter()


def log(text: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {text}", flush=True)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds (31)")
    parser.add_argument("--batch-ms", type=float, default=8.0, help="milliseconds per batch (8)")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated stores")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument(
        "--growth-max",
        type=int,
        default=1_000_000,
        help="largest number of live sessions and of expired rows to purge (1000000)",
    )
    parser.add_argument("--skip-growth", action="store_true", help="skip the growth runs")
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory checks")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 5 rounds of 3 ms batches, growth to 10,000",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--memcached-url",
        default=os.environ.get("BENCH_MEMCACHED_URL", "memcached://127.0.0.1:11211"),
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rewrite the Markdown and charts from --out's results.json",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batch_ms, args.growth_max = 5, 3.0, min(args.growth_max, 10_000)
    return args


def _reachable(args: argparse.Namespace) -> dict[str, str]:
    """The stores that can't be reached, with why."""
    down: dict[str, str] = {}
    try:
        client = redis.Redis.from_url(args.redis_url, socket_connect_timeout=2)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        down["redis"] = f"{type(exc).__name__}: {exc}"
    try:
        _memcached_version(args.memcached_url)
    except Exception as exc:
        down["memcached"] = f"{type(exc).__name__}: {exc}"
    try:
        engine = sa.create_engine(args.pg_url)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        down["postgresql"] = f"{type(exc).__name__}: {exc}"
    return down


def _memcached_version(url: str) -> str:
    client = MemcacheClient(memcached_address(url), connect_timeout=2, timeout=2)
    try:
        return str(client.version().decode())
    finally:
        client.close()


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()},"
        f" CPython {platform.python_version()}"
    )


def _versions(args: argparse.Namespace, down: dict[str, str]) -> dict[str, str]:
    versions = {}
    for name in PEERS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    if "redis" not in down:
        client = redis.Redis.from_url(args.redis_url)
        versions["Redis server"] = str(client.info("server")["redis_version"])
        client.close()
    if "memcached" not in down:
        versions["memcached server"] = _memcached_version(args.memcached_url)
    if "postgresql" not in down:
        engine = sa.create_engine(args.pg_url)
        with engine.connect() as conn:
            versions["PostgreSQL"] = str(conn.execute(sa.text("SHOW server_version")).scalar())
        engine.dispose()
    import sqlite3

    versions["SQLite"] = sqlite3.sqlite_version
    return versions


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        _write(json.loads((args.out / "results.json").read_text()), args.out)
        return 0
    down = _reachable(args)
    for store, why in down.items():
        log(f"{store} is unreachable and left out: {why}")
    stores = [s for s in args.stores.split(",") if s and s not in down]
    scenarios = [s for s in args.scenarios.split(",") if s]
    tag = f"wsgisession_bench_{os.getpid()}"
    backends = Backends(
        Path(tempfile.mkdtemp(prefix="wsgisession-bench-")),
        args.pg_url,
        args.redis_url,
        tag,
        args.memcached_url,
    )
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.date.today().isoformat(),
            "machine": _machine(),
            "versions": _versions(args, down),
            "method": (
                f"In-process WSGI calls; {args.rounds} rounds, each running one batch of"
                f" ~{args.batch_ms:g} ms of every contender in an order shuffled each round;"
                " medians over rounds (three times as many for *untouched*); ratios paired"
                " round by round; GC on."
            ),
            "rounds": args.rounds,
            "batch_ms": args.batch_ms,
            "unreachable": down,
            "command": "python benchmarks/bench.py " + " ".join(argv or sys.argv[1:]),
        },
        "cells": [],
        "growth": {},
        "memory": {},
    }
    try:
        if not args.skip_memory:
            _memory(results, backends)
        for store in stores:
            comparison = Comparison(store, backends)
            for scenario in scenarios:
                cell = comparison.run(
                    scenario, rounds=args.rounds, batch_seconds=args.batch_ms / 1e3
                )
                figures = cell_figures(cell)
                results["cells"].append(figures)
                med = {k: v["median_us"] for k, v in figures["contenders"].items()}
                log(
                    f"{scenario:>9} {store:<10} "
                    + "  ".join(f"{k} {v:,.1f}" for k, v in med.items())
                )
        order = {s: i for i, s in enumerate(SCENARIOS)}
        results["cells"].sort(key=lambda c: (order[c["scenario"]], STORES.index(c["store"])))
        if not args.skip_growth:
            _growth(results, backends, args, stores)
    finally:
        log("cleaning up")
        backends.cleanup()
    _write(results, args.out)
    return 0


def _write(results: dict[str, Any], out: Path) -> None:
    """Check the targets and write the JSON, the Markdown and the charts to *out*."""
    results["targets"] = check_targets(results)
    write_json(results, out / "results.json")
    (out / "results.md").write_text(markdown(results))
    (out / "readme-section.md").write_text(readme_section(results))
    for path in charts(results, out):
        log(f"wrote {path}")
    log(f"wrote {out / 'results.md'} and results.json")
    missed = [t for t in results["targets"] if t["met"] is False]
    log(f"{len(results['targets']) - len(missed)} of {len(results['targets'])} checks met")


def _memory(results: dict[str, Any], backends: Backends) -> None:
    from _memory import live_sessions_memory, metrics_cost, steady_state

    log("memory: 10,000 live sessions of ~1 KB")
    results["memory"]["live"] = live_sessions_memory(backends, 10_000, 1024)
    log("memory: 100,000 requests on a fixed set of sessions")
    results["memory"]["steady"] = steady_state(backends, 100, 20_000, 100_000)
    results["memory"]["metrics"] = metrics_cost(backends, 10_000)


def _growth(
    results: dict[str, Any], backends: Backends, args: argparse.Namespace, stores: list[str]
) -> None:
    from _growth import live_sessions, purge, session_sizes

    growth = results["growth"]
    steps = [n for n in (1_000, 100_000, 1_000_000) if n <= args.growth_max]
    if args.growth_max not in steps and args.growth_max > 1_000:
        steps.append(args.growth_max)
    growth["live"] = {}
    rounds = max(5, args.rounds // 2)
    for store in ("redis", "postgresql", "file"):
        if store not in stores:
            continue
        log(f"growth: live sessions on {store}")
        growth["live"][store] = live_sessions(
            store, backends, steps, rounds=rounds, batch_seconds=args.batch_ms / 1e3, log=log
        )
    log("growth: session size")
    growth["sizes"] = session_sizes(
        backends,
        [100, 1_000, 10_000, 100_000, 1_000_000],
        rounds=rounds,
        batch_seconds=args.batch_ms / 1e3,
    )
    if "postgresql" in stores:
        log("growth: cleanup() of expired PostgreSQL rows")
        growth["purge"] = purge(
            backends, expired_rows=min(args.growth_max, 1_000_000), live_rows=1_000, log=log
        )


if __name__ == "__main__":
    raise SystemExit(main())
