"""Events, metrics and logs: what the middleware tells listeners, counters and loggers.

The behaviour is in docs/behaviour.rst, section "Events, metrics and logs". What logs
must never hold is also checked on every store in ``test_security.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from pathlib import Path
from typing import get_args

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from tests.helpers import (
    SECRET,
    USER_ROUTES,
    FakeClock,
    body,
    cookie_value,
    counter,
    handle_of,
    id_of,
    log_in,
    make_client,
    session_id_of,
    user_app,
)
from wsgisession import Session, StoreError
from wsgisession.events import EventName, SessionEvent
from wsgisession.ids import store_key
from wsgisession.prometheus import register
from wsgisession.stores.memory import MemoryStore

# -- events ------------------------------------------------------------------------------


def test_events_name_the_handle_and_nothing_else(clock: FakeClock) -> None:
    events: list[SessionEvent] = []
    store = MemoryStore()
    middleware = user_app(store, listeners=[events.append], timeout=100)
    client = log_in(middleware)  # created: the first write of a new session
    first = handle_of(client)
    client.get("/inc")  # saved
    clock.advance(60)
    client.get("/")  # refreshed
    client.get("/login?user=ann")  # regenerated
    second = handle_of(client)
    client.get("/logout")  # invalidated
    expired = log_in(middleware)
    clock.advance(200)
    expired.get("/")  # expired
    names = [event.name for event in events]
    assert names[:5] == ["created", "saved", "refreshed", "regenerated", "invalidated"]
    assert names[-1] == "expired"
    assert events[0].handle == first and events[3].handle == second
    assert events[4].handle == second
    assert set(names) <= set(get_args(EventName))
    for event in events:
        assert [field.name for field in dataclasses.fields(event)] == ["name", "handle", "time"]
        assert event.time == pytest.approx(clock(), abs=300)


def test_corrupt_conflict_and_store_error_events(tmp_path: Path) -> None:
    events: list[str] = []
    store = MemoryStore()
    inner: dict[str, Client] = {}

    def slow(session: Session, request: Request) -> str:
        session.get("n")
        inner["twin"].get("/inc")
        session["slow"] = 1
        return "ok"

    client, middleware = make_client(
        {**USER_ROUTES, "/slow": slow}, store=store, listeners=[lambda e: events.append(e.name)]
    )
    client.get("/inc")
    twin = Client(middleware)
    cookie = client.get_cookie("session_id")
    assert cookie is not None
    twin.set_cookie("session_id", cookie.value)
    inner["twin"] = twin
    client.get("/slow")
    assert "conflict" in events

    key = store_key(id_of(cookie.value))
    record = store._records[key]
    store._records[key] = type(record)(
        data=b"[", version=record.version, created_at=record.created_at,
        expires_at=record.expires_at, last_seen=record.last_seen, meta=record.meta,
    )  # fmt: skip
    client.get("/")
    assert "corrupt" in events

    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    broken, _ = make_client(
        USER_ROUTES, store=f"file:{blocker}/x", listeners=[lambda e: events.append(e.name)]
    )
    with pytest.raises(StoreError):
        broken.get("/inc")
    assert events[-1] == "store_error"


def test_a_failing_listener_is_logged_and_the_request_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: SessionEvent) -> None:
        raise RuntimeError("listener bug")

    client, _ = make_client(USER_ROUTES, listeners=[broken])
    with caplog.at_level(logging.ERROR, logger="wsgisession"):
        assert body(client.get("/inc")) == 1
    assert "listener" in caplog.text and "listener bug" in caplog.text


# -- metrics -------------------------------------------------------------------------------


def test_metrics_count_what_happened(clock: FakeClock) -> None:
    client, middleware = make_client({**USER_ROUTES, "/plain": lambda s, r: "plain"}, timeout=100)
    assert middleware.metrics()["requests"] == 0
    client.get("/inc")  # new: no load, one save
    client.get("/inc")  # load + save
    clock.advance(60)
    client.get("/")  # load + refresh
    clock.advance(200)
    client.get("/")  # load: expired
    client.get("/plain")  # never touches the session: not counted at all
    metrics = middleware.metrics()
    assert {k: metrics[k] for k in ("requests", "loads", "saves", "refreshes", "expired")} == {
        "requests": 4,
        "loads": 3,
        "saves": 2,
        "refreshes": 1,
        "expired": 1,
    }
    assert metrics["conflicts"] == metrics["corrupt"] == metrics["store_errors"] == 0
    latency = metrics["store_latency"]
    assert latency["count"] == 6
    assert 0 < latency["p50"] <= latency["p99"] < 1


def test_metrics_lose_no_count_or_latency_across_threads() -> None:
    from wsgisession.events import Metrics

    metrics = Metrics()
    per_thread = 5_000

    def work() -> None:
        for _ in range(per_thread):
            metrics.count("loads")
            metrics.observe(0.002)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    snapshot = metrics.snapshot()
    assert snapshot["loads"] == 8 * per_thread
    assert snapshot["store_latency"]["count"] == 8 * per_thread
    buckets, total, count = metrics.histogram()
    assert count == 8 * per_thread and buckets[-1] == (float("inf"), 8 * per_thread)
    assert total == pytest.approx(0.002 * 8 * per_thread)


def test_folded_metrics_equal_a_one_by_one_tally() -> None:
    """Folding a batch at once (sorted into buckets, summed in C) gives the totals that
    adding each count and latency in turn gives, a latency equal to a bound included."""
    import bisect
    import random

    from wsgisession.events import LATENCY_BUCKETS, Metrics

    rng = random.Random(7)
    latencies = [rng.choice(LATENCY_BUCKETS) for _ in range(300)]
    latencies += [rng.uniform(0, 6) for _ in range(2700)]
    metrics = Metrics()
    for index, seconds in enumerate(latencies):
        metrics.observe(seconds)
        metrics.count("loads")
        if index % 3 == 0:
            metrics.count("lock_wait_seconds", seconds)
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    total = 0.0
    for seconds in latencies:
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        total += seconds
    cumulative, folded_total, count = metrics.histogram()
    assert [amount for _, amount in cumulative] == list(itertools.accumulate(buckets))
    assert folded_total == total  # exactly: added in the same order
    assert count == len(latencies)
    snapshot = metrics.snapshot()
    assert snapshot["loads"] == len(latencies)
    assert snapshot["lock_wait_seconds"] == pytest.approx(sum(latencies[::3]))


def test_metrics_refuse_an_unknown_counter_at_once() -> None:
    from wsgisession.events import Metrics

    with pytest.raises(KeyError, match="unknown counter 'lods'"):
        Metrics().count("lods")


def test_prometheus_exposes_counters_and_the_latency_histogram() -> None:
    client, middleware = make_client(USER_ROUTES)
    registry = CollectorRegistry()
    register(middleware, registry)
    client.get("/inc")
    client.get("/inc")
    text = generate_latest(registry).decode()
    assert "wsgisession_saves_total 2.0" in text
    assert "wsgisession_requests_total 2.0" in text
    assert 'wsgisession_store_latency_seconds_bucket{le="+Inf"} 3.0' in text
    assert "wsgisession_store_latency_seconds_count 3.0" in text


def test_prometheus_refuses_the_same_names_twice_on_one_registry() -> None:
    # A registry built without auto_describe took both, and every series came twice.
    _, middleware = make_client(USER_ROUTES)
    _, other = make_client(USER_ROUTES)
    registry = CollectorRegistry()
    register(middleware, registry)
    for again in (middleware, other):
        with pytest.raises(ValueError, match=r"named wsgisession_\* already"):
            register(again, registry)
    register(other, registry, namespace="admin_sessions")
    text = generate_latest(registry).decode()
    assert text.count("# TYPE wsgisession_saves_total counter") == 1
    assert "admin_sessions_saves_total 0.0" in text


# -- logs ----------------------------------------------------------------------------------


def test_logs_never_hold_a_secret_or_a_full_id(caplog: pytest.LogCaptureFixture) -> None:
    def logout(session: Session, request: Request) -> str:
        session.invalidate()
        return "ok"

    with caplog.at_level(logging.DEBUG, logger="wsgisession"):
        client, _ = make_client({"/inc": counter, "/logout": logout}, bind_ip=True)
        client.get("/inc")
        session_id = session_id_of(client)
        value = cookie_value(client)
        client.get("/inc", environ_overrides={"REMOTE_ADDR": "10.9.9.9"})
        client.set_cookie("session_id", value[:-1] + "x")
        client.get("/inc")
        client.get("/logout")
    assert SECRET not in caplog.text
    assert session_id not in caplog.text
    assert store_key(session_id) not in caplog.text
