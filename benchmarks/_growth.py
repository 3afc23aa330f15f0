"""Growth: time per request as live sessions and session size grow, and a big purge.

Live sessions are written straight into each store in its own record format (Redis
pipelines, PostgreSQL ``COPY``, files written in place), because a million requests
through the middleware would take most of an hour. Requests then cycle over a sample of
sessions spread through the whole population, so a measurement does not just hit one
cached row.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import replace as _replace
from typing import Any, Final

import sqlalchemy as sa
from _contenders import SECRET, Backends, _environ_session, delete_prefix, ws_middleware
from _limits import RawMemory, RawSession
from _scenarios import OTHER_COOKIES, SCENARIOS, TIMEOUT, cart, handler
from _timing import Contender, base_environ, interleave

import wsgisession
from wsgisession.cookies import SessionCookie
from wsgisession.ids import new_session_id, store_key
from wsgisession.serializers import JSONSerializer
from wsgisession.stores.base import Record

#: How many sessions the timed requests cycle over.
SAMPLE = 1000
_DATA = JSONSerializer().dumps({"user": "u-1", "n": 0})
_META = b'{"v":1}'


def _record(now: float, expires_at: float) -> Record:
    return Record(
        data=_DATA,
        version=1,
        created_at=now,
        expires_at=expires_at,
        last_seen=now,
        meta=_META,
    )


def _filler_keys(count: int) -> Iterator[str]:
    for _ in range(count):
        yield os.urandom(32).hex()


class _Population:
    """Writes records straight into one wsgisession store, in bulk."""

    def __init__(self, mw: wsgisession.SessionMiddleware, store: str) -> None:
        self.mw = mw
        self.kind = store
        self.size = 0

    def add(self, keys: list[str], expires_at: float) -> None:
        record = _record(time.time(), expires_at)
        store: Any = self.mw.store
        if self.kind == "redis":
            self._redis(store, keys, record)
        elif self.kind == "postgresql":
            copy_records(store, keys, record)
        elif self.kind == "file":
            self._files(store, keys, record)
        else:
            raise ValueError(self.kind)
        self.size += len(keys)

    @staticmethod
    def _redis(store: Any, keys: list[str], record: Record) -> None:
        from wsgisession.stores import _redis_scripts as redis_scripts

        client = store.client
        ttl = max(1, int((record.expires_at - time.time()) * 1000))
        value = redis_scripts.encode(record)
        for start in range(0, len(keys), 10_000):
            pipe = client.pipeline(transaction=False)
            for key in keys[start : start + 10_000]:
                pipe.set(store.key_prefix + key, value, px=ttl)
            pipe.execute()

    @staticmethod
    def _files(store: Any, keys: list[str], record: Record) -> None:
        from wsgisession.stores._file_format import encode_record as _encode

        blob = _encode(record)
        made: set[str] = set()
        for key in keys:
            shard = store._shard(key)
            if shard not in made:
                os.makedirs(shard, exist_ok=True)
                made.add(shard)
            with open(os.path.join(shard, key), "wb") as f:
                f.write(blob)


def copy_records(store: Any, keys: list[str], record: Record) -> None:
    """Insert a row per key into an SQLStore's table with PostgreSQL's ``COPY``."""
    store.ping()  # creates the table
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        columns = "id_hash, data, meta, version, created_at, expires_at, last_seen"
        name = store.table.name
        for start in range(0, len(keys), 100_000):
            with cursor.copy(f'COPY "{name}" ({columns}) FROM STDIN') as copy:
                for key in keys[start : start + 100_000]:
                    copy.write_row(
                        (
                            key,
                            record.data,
                            record.meta,
                            record.version,
                            record.created_at,
                            record.expires_at,
                            record.last_seen,
                        )
                    )
        cursor.execute(f'ANALYZE "{name}"')
        raw.commit()
    finally:
        raw.close()


# The population is one unsealed record copied under a million keys (a sealed record
# opens only under its own session's id, and sealing each would take longer than the
# run): the middleware reads such records as encrypt="migrate" lets it, and seals what
# it writes. What grows is the store, which sealing doesn't change.
GROWTH_ENCRYPT: Final = "migrate"


def live_sessions(
    store: str,
    b: Backends,
    sizes: list[int],
    *,
    rounds: int,
    batch_seconds: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Per-request time of a read and a write at each population size on *store*.

    Steps of the population are minutes apart, and this machine's speed (and its
    neighbours' load on the shared servers) drifts more than that in minutes. So each
    step also times the same requests against a reference store of a constant 1,000
    sessions on the same server (another Redis database, another table, another
    directory), in the same rounds, and the growth is judged on the ratio of the two.
    """
    app = handler(_environ_session)
    mw = ws_middleware(app, store, b, name="growth", encrypt=GROWTH_ENCRYPT)
    reference = _reference(app, store, b)
    population = _Population(mw, store)
    results: dict[str, Any] = {"sizes": [], "fill_seconds": []}
    for name in ("read", "write", "ref_read", "ref_write", "read_vs_ref", "write_vs_ref"):
        results[name] = []
    expires = time.time() + 10 * TIMEOUT
    ref_ids = [new_session_id() for _ in range(SAMPLE)]
    _Population(reference, store).add([store_key(i) for i in ref_ids], expires)
    for size in sizes:
        started = time.perf_counter()
        # Each step's sample is drawn from the records that step adds, shuffled among
        # them, so the requests don't keep hitting the oldest, best-cached records.
        ids = [new_session_id() for _ in range(min(SAMPLE, size - population.size))]
        keys = [store_key(i) for i in ids]
        keys += _filler_keys(size - population.size - len(keys))
        random.shuffle(keys)
        population.add(keys, expires)
        fill_seconds = time.perf_counter() - started
        # Flush what the fill left dirty, so that the kernel's writeback of a million
        # new files does not compete with the requests being timed.
        os.sync()
        contenders = []
        for name in ("read", "write"):
            contenders.append(Contender(name, mw, _environs(mw, ids, name)))
            contenders.append(
                Contender(f"ref_{name}", reference, _environs(reference, ref_ids, name))
            )
        timings = interleave(contenders, rounds=rounds, batch_seconds=batch_seconds)
        results["sizes"].append(size)
        results["fill_seconds"].append(fill_seconds)
        for name in ("read", "write"):
            results[name].append(timings.median(name))
            results[f"ref_{name}"].append(timings.median(f"ref_{name}"))
            results[f"{name}_vs_ref"].append(
                timings.paired(lambda r, n=name: r[n] / r[f"ref_{n}"])
            )
        log(
            f"  {store} {size:>9,} live: read {timings.median('read') * 1e6:8.1f} µs"
            f" ({results['read_vs_ref'][-1]:.2f}x the reference), write"
            f" {timings.median('write') * 1e6:8.1f} µs ({results['write_vs_ref'][-1]:.2f}x)"
            f" (filled in {fill_seconds:.1f} s)"
        )
    started = time.perf_counter()
    _empty(mw, store, b)
    _empty(reference, store, b)
    results["empty_seconds"] = time.perf_counter() - started
    return results


def _environs(
    mw: wsgisession.SessionMiddleware, ids: list[str], name: str
) -> list[dict[str, Any]]:
    cookie = SessionCookie(mw.config)
    return [
        base_environ(
            HTTP_COOKIE=f"{OTHER_COOKIES}; session_id={cookie.sign(i)}",
            **{"bench.action": SCENARIOS[name].action, "bench.scenario": name},
        )
        for i in ids
    ]


def _reference(app: Any, store: str, b: Backends) -> wsgisession.SessionMiddleware:
    """wsgisession on a store of its own beside the growing one, on the same server."""
    if store != "redis":
        return ws_middleware(app, store, b, name="growthref", encrypt=GROWTH_ENCRYPT)
    # Another database of the same server: Redis keeps one keyspace per database.
    parts = urllib.parse.urlsplit(b.redis_url)
    db = int(parts.path.strip("/") or 0)
    url = urllib.parse.urlunsplit(parts._replace(path=f"/{(db + 1) % 16}"))
    prefix = f"{b.tag}:growthref:"
    mw = wsgisession.SessionMiddleware(
        app,
        secret_key=SECRET,
        timeout=TIMEOUT,
        cleanup_interval=0,
        encrypt=GROWTH_ENCRYPT,
        store=url,
        store_options={"key_prefix": prefix},
    )

    def forget() -> None:
        store: Any = mw.store
        delete_prefix(store.client, prefix)
        mw.close()

    b.on_cleanup(forget)
    return mw


def _empty(mw: wsgisession.SessionMiddleware, store: str, b: Backends) -> None:
    import shutil

    target: Any = mw.store
    if store == "redis":
        delete_prefix(target.client, target.key_prefix)
    elif store == "postgresql":
        with target.engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{target.table.name}"'))
    elif store == "file":
        shutil.rmtree(target.directory, ignore_errors=True)


def session_sizes(
    b: Backends, sizes: list[int], *, rounds: int, batch_seconds: float
) -> dict[str, Any]:
    """Per-request time of a read+write of sessions of each size, and the serializer's speed.

    On the memory store, so the middleware and its serializer are all that is measured;
    beside it the by-hand version (plain ``json`` and a dict) of the same work.
    """
    app = handler(_environ_session)
    mw = ws_middleware(app, "memory", b, name="sizes")
    raw = RawSession(app, RawMemory())
    out: dict[str, Any] = {"sizes": [], "wsgisession": [], "raw": [], "serialized": []}
    out.update({"serializer": [], "json": [], "serializer_ratio": []})
    serializer = JSONSerializer()
    from _contenders import seed_through

    seed = seed_through(mw, "session_id")
    for size in sizes:
        data = {"user": "u-1", "n": 0, "cart": cart(size)}
        environ = dict(HTTP_COOKIE=f"{OTHER_COOKIES}; {seed(data)}")
        raw_environ = dict(HTTP_COOKIE=f"{OTHER_COOKIES}; {raw.seed(data)}")
        extra = {"bench.action": SCENARIOS["big"].action, "bench.scenario": "big"}
        encoded = serializer.dumps(data)

        def ours(environ: dict[str, Any], start_response: Any, data: Any = data) -> list[bytes]:
            serializer.loads(serializer.dumps(data))
            return []

        def plain(environ: dict[str, Any], start_response: Any, data: Any = data) -> list[bytes]:
            json.loads(json.dumps(data, separators=(",", ":")))
            return []

        timings = interleave(
            [
                Contender("wsgisession", mw, base_environ(**environ, **extra)),
                Contender("raw", raw, base_environ(**raw_environ, **extra)),
                Contender("serializer", ours, base_environ()),
                Contender("json", plain, base_environ()),
            ],
            rounds=rounds,
            batch_seconds=batch_seconds,
        )
        out["sizes"].append(size)
        out["serialized"].append(len(encoded))
        for name in ("wsgisession", "raw", "serializer", "json"):
            out[name].append(timings.median(name))
        # "json" time over "serializer" time: 1.0 is as fast as plain json.
        ratio = timings.paired(lambda r: r["json"] / r["serializer"])
        out["serializer_ratio"].append(ratio)
    return out


def purge(
    b: Backends, *, expired_rows: int, live_rows: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """``cleanup()`` of *expired_rows* expired PostgreSQL rows, in bounded batches.

    Meanwhile another thread loads and saves live sessions of the same table; its
    slowest request shows whether a batch ever held more than its own rows.
    """
    mw = ws_middleware(handler(_environ_session), "postgresql", b, name="purge")
    store: Any = mw.store
    now = time.time()
    log(f"  inserting {expired_rows:,} expired and {live_rows:,} live rows")
    started = time.perf_counter()
    copy_records(store, list(_filler_keys(expired_rows)), _record(now - 7200, now - 3600))
    live_keys = list(_filler_keys(live_rows))
    copy_records(store, live_keys, _record(now, now + TIMEOUT))
    fill_seconds = time.perf_counter() - started

    batches: list[dict[str, float]] = []
    pending: dict[int, float] = {}

    def before(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: Any
    ) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            pending[id(cursor)] = time.perf_counter()

    def after(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: Any
    ) -> None:
        began = pending.pop(id(cursor), None)
        if began is not None:
            size = len(params) if isinstance(params, list | tuple) else len(params or {})
            batches.append(
                {"seconds": time.perf_counter() - began, "rows": cursor.rowcount, "params": size}
            )

    latencies: list[float] = []
    stop = threading.Event()

    def traffic() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            key = rng.choice(live_keys)
            began = time.perf_counter()
            record = store.load(key)
            if record is not None:
                store.save(
                    key,
                    _replace(record, version=record.version + 1),
                    expected_version=record.version,
                )
            latencies.append(time.perf_counter() - began)

    sa.event.listen(store.engine, "before_cursor_execute", before)
    sa.event.listen(store.engine, "after_cursor_execute", after)
    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        started = time.perf_counter()
        removed = store.cleanup()
        seconds = time.perf_counter() - started
    finally:
        stop.set()
        worker.join()
        sa.event.remove(store.engine, "before_cursor_execute", before)
        sa.event.remove(store.engine, "after_cursor_execute", after)
    remaining_live = store.count()
    _empty(mw, "postgresql", b)
    times = sorted(batch["seconds"] for batch in batches)
    result = {
        "expired_rows": expired_rows,
        "live_rows": live_rows,
        "removed": removed,
        "live_left": remaining_live,
        "seconds": seconds,
        "fill_seconds": fill_seconds,
        "batch_size": store.cleanup_batch,
        "batches": len(batches),
        "max_rows_per_batch": max((batch["rows"] for batch in batches), default=0),
        "batch_p50": statistics.median(times) if times else None,
        "batch_max": times[-1] if times else None,
        "traffic_requests": len(latencies),
        "traffic_p50": statistics.median(latencies) if latencies else None,
        "traffic_max": max(latencies) if latencies else None,
    }
    log(
        f"  removed {removed:,} in {seconds:.1f} s, {len(batches)} batches of at most"
        f" {result['max_rows_per_batch']} rows; concurrent requests p50"
        f" {(result['traffic_p50'] or 0) * 1e3:.2f} ms,"
        f" max {(result['traffic_max'] or 0) * 1e3:.1f} ms"
    )
    return result
