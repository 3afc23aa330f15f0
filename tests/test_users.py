"""Sessions per user, events, metrics and their command line.

The behaviour is in docs/behaviour.rst, sections "Users" and "Observability".
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, get_args

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from tests.conftest import FakeClock
from tests.helpers import SECRET, body, counter, dump, make_client
from wsgisession import Session, SessionMiddleware, StoreError
from wsgisession.cli import main
from wsgisession.events import EventName, SessionEvent
from wsgisession.ids import store_key
from wsgisession.prometheus import register
from wsgisession.stores import Store
from wsgisession.stores.memory import MemoryStore


def login(session: Session, request: Request) -> str | None:
    session.regenerate()
    session.user_id = request.args.get("user", "ann")
    session.remember = request.args.get("remember") == "1"
    session["name"] = session.user_id
    return session.handle


def whoami(session: Session, request: Request) -> Any:
    return {"user": session.user_id, "handle": session.handle}


def logout(session: Session, request: Request) -> str:
    session.invalidate()
    return "bye"


def forget_user(session: Session, request: Request) -> str:
    session.user_id = None
    return "ok"


ROUTES = {
    "/login": login,
    "/": whoami,
    "/logout": logout,
    "/forget": forget_user,
    "/inc": counter,
    "/dump": dump,
}


def app_for(store: Store | str = "memory://", **options: Any) -> SessionMiddleware:
    _, middleware = make_client(ROUTES, store=store, **options)
    return middleware


def log_in(middleware: SessionMiddleware, user: str = "ann", **environ: Any) -> Client:
    client = Client(middleware)
    query = f"/login?user={user}"
    client.get(query, environ_overrides=environ or None)
    return client


def handle_of(client: Client) -> str:
    handle = body(client.get("/"))["handle"]
    assert isinstance(handle, str)
    return handle


# -- on every store -------------------------------------------------------------------


def test_log_out_other_devices_with_three_clients(store: Store) -> None:
    holder: dict[str, SessionMiddleware] = {}

    def log_out_others(session: Session, request: Request) -> int:
        user = session.user_id
        assert user is not None
        return holder["middleware"].end_user_sessions(user, keep=session)

    _, middleware = make_client({**ROUTES, "/others": log_out_others}, store=store)
    holder["middleware"] = middleware
    phone, laptop, tablet = (log_in(middleware) for _ in range(3))
    log_in(middleware, user="bob")
    assert len(middleware.user_sessions("ann")) == 3

    assert body(laptop.get("/others")) == 2
    assert body(laptop.get("/"))["user"] == "ann"
    assert body(phone.get("/"))["user"] is None
    assert body(tablet.get("/"))["user"] is None
    assert [info.handle for info in middleware.user_sessions("ann")] == [handle_of(laptop)]
    assert len(middleware.user_sessions("bob")) == 1


def test_user_sessions_lists_newest_first_with_details(store: Store, clock: FakeClock) -> None:
    middleware = app_for(store, track_clients=True, remember_me_timeout=86400)
    first = log_in(middleware, HTTP_USER_AGENT="A" * 300, REMOTE_ADDR="10.0.0.1")
    clock.advance(5)
    second = Client(middleware)
    second.get("/login?user=ann&remember=1", environ_overrides={"REMOTE_ADDR": "10.0.0.2"})
    infos = middleware.user_sessions("ann")
    assert [info.handle for info in infos] == [handle_of(second), handle_of(first)]
    newest, oldest = infos
    assert newest.remembered and not oldest.remembered
    assert oldest.user_agent == "A" * 200
    assert (oldest.remote_addr, newest.remote_addr) == ("10.0.0.1", "10.0.0.2")
    assert newest.created_at > oldest.created_at
    assert newest.expires_at > newest.last_seen >= newest.created_at


def test_details_are_absent_without_track_clients(store: Store) -> None:
    middleware = app_for(store)
    log_in(middleware, HTTP_USER_AGENT="browser", REMOTE_ADDR="10.0.0.1")
    [info] = middleware.user_sessions("ann")
    assert info.user_agent is None and info.remote_addr is None


def test_regenerate_moves_the_handle_and_the_old_one_ends_nothing(store: Store) -> None:
    middleware = app_for(store)
    client = log_in(middleware)
    old = handle_of(client)
    client.get("/login?user=ann")
    new = handle_of(client)
    assert new != old
    assert [info.handle for info in middleware.user_sessions("ann")] == [new]
    assert not middleware.end_session(old)
    assert body(client.get("/"))["user"] == "ann"


def test_end_session_by_handle(store: Store) -> None:
    middleware = app_for(store)
    client = log_in(middleware)
    handle = handle_of(client)
    assert middleware.end_session(handle)
    assert not middleware.end_session(handle)
    assert middleware.user_sessions("ann") == []
    assert body(client.get("/"))["user"] is None


@pytest.mark.parametrize("value", ["", "nothex" * 8, "A" * 64, "../" * 21 + "x", "0" * 63])
def test_end_session_with_something_that_is_not_a_handle_ends_nothing(value: str) -> None:
    assert not app_for().end_session(value)


def test_invalidate_and_unlinking_remove_the_session_from_the_list(store: Store) -> None:
    middleware = app_for(store)
    leaving = log_in(middleware)
    forgetting = log_in(middleware)
    staying = log_in(middleware)
    leaving.get("/logout")
    forgetting.get("/forget")
    assert [info.handle for info in middleware.user_sessions("ann")] == [handle_of(staying)]


def test_expired_session_is_not_listed_without_cleanup(store: Store, clock: FakeClock) -> None:
    middleware = app_for(store, timeout=60)
    log_in(middleware)
    clock.advance(61)
    assert middleware.user_sessions("ann") == []


def test_cap_per_user_ends_the_oldest(store: Store, clock: FakeClock) -> None:
    middleware = app_for(store, max_sessions_per_user=2)
    clients = []
    for _ in range(3):
        clients.append(log_in(middleware))
        clock.advance(1)
    assert len(middleware.user_sessions("ann")) == 2
    assert body(clients[0].get("/"))["user"] is None
    assert body(clients[1].get("/"))["user"] == "ann"
    assert body(clients[2].get("/"))["user"] == "ann"


def test_user_id_survives_regenerate_and_is_dropped_by_invalidate(store: Store) -> None:
    def regen(session: Session, request: Request) -> str:
        session.regenerate()
        return "ok"

    _, middleware = make_client({**ROUTES, "/regen": regen}, store=store)
    client = log_in(middleware)
    client.get("/regen")
    assert body(client.get("/"))["user"] == "ann"
    client.get("/logout")
    assert body(client.get("/"))["user"] is None


def test_last_seen_moves_on_save_and_refresh(store: Store, clock: FakeClock) -> None:
    middleware = app_for(store, timeout=100)
    client = log_in(middleware)
    [before] = middleware.user_sessions("ann")
    clock.advance(10)
    client.get("/inc")
    [saved] = middleware.user_sessions("ann")
    assert saved.last_seen == pytest.approx(before.last_seen + 10, abs=1)
    clock.advance(60)
    client.get("/")  # read past half its life: refreshed
    [refreshed] = middleware.user_sessions("ann")
    assert refreshed.last_seen == pytest.approx(saved.last_seen + 60, abs=1)
    assert refreshed.expires_at > saved.expires_at


# -- events ------------------------------------------------------------------------------


def test_events_name_the_handle_and_nothing_else(clock: FakeClock) -> None:
    events: list[SessionEvent] = []
    store = MemoryStore()
    middleware = app_for(store, listeners=[events.append], timeout=100)
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
        {**ROUTES, "/slow": slow}, store=store, listeners=[lambda e: events.append(e.name)]
    )
    client.get("/inc")
    twin = Client(middleware)
    cookie = client.get_cookie("session_id")
    assert cookie is not None
    twin.set_cookie("session_id", cookie.value)
    inner["twin"] = twin
    client.get("/slow")
    assert "conflict" in events

    key = store_key(cookie.value.rsplit(".", 1)[0])
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
        ROUTES, store=f"file:{blocker}/x", listeners=[lambda e: events.append(e.name)]
    )
    with pytest.raises(StoreError):
        broken.get("/inc")
    assert events[-1] == "store_error"


def test_a_failing_listener_is_logged_and_the_request_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: SessionEvent) -> None:
        raise RuntimeError("listener bug")

    client, _ = make_client(ROUTES, listeners=[broken])
    with caplog.at_level(logging.ERROR, logger="wsgisession"):
        assert body(client.get("/inc")) == 1
    assert "listener" in caplog.text and "listener bug" in caplog.text


# -- metrics -------------------------------------------------------------------------------


def test_metrics_count_what_happened(clock: FakeClock) -> None:
    client, middleware = make_client({**ROUTES, "/plain": lambda s, r: "plain"}, timeout=100)
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


def test_prometheus_exposes_counters_and_the_latency_histogram() -> None:
    client, middleware = make_client(ROUTES)
    registry = CollectorRegistry()
    register(middleware, registry)
    client.get("/inc")
    client.get("/inc")
    text = generate_latest(registry).decode()
    assert "wsgisession_saves_total 2.0" in text
    assert "wsgisession_requests_total 2.0" in text
    assert 'wsgisession_store_latency_seconds_bucket{le="+Inf"} 3.0' in text
    assert "wsgisession_store_latency_seconds_count 3.0" in text


# -- command line ------------------------------------------------------------------------------


def test_command_line_lists_and_logs_out_a_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir = tmp_path / "sessions"
    _, middleware = make_client(ROUTES, store=f"file:{store_dir}")
    for _ in range(2):
        log_in(middleware)
    ini = tmp_path / "app.ini"
    ini.write_text(f"[session]\nsecret_key = {SECRET}\nstore = file:{store_dir}\n")

    assert main(["sessions", "--user", "ann", "--config", str(ini)]) == 0
    listed = capsys.readouterr().out
    assert "2 live sessions of user 'ann'" in listed
    for info in middleware.user_sessions("ann"):
        assert info.handle in listed

    assert main(["logout", "--user", "ann", "--config", str(ini)]) == 0
    assert "2 sessions of user 'ann' ended" in capsys.readouterr().out
    assert middleware.user_sessions("ann") == []
    assert main(["sessions", "--user", "ann", "--config", str(ini)]) == 0
    assert "no live sessions" in capsys.readouterr().out


def test_command_line_user_commands_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.ini"
    bad.write_text("[session]\nstore = file:/tmp/x\n")
    assert main(["logout", "--user", "ann", "--config", str(bad)]) == 2
    assert "option 'secret_key'" in capsys.readouterr().err
    down = tmp_path / "down.ini"
    down.write_text(f"[session]\nsecret_key = {SECRET}\nstore = redis://127.0.0.1:1/0\n")
    assert main(["sessions", "--user", "ann", "--config", str(down)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wsgisession: store error") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(42, TypeError, id="int"),
        pytest.param("", ValueError, id="empty"),
        pytest.param("\ud800", ValueError, id="lone-surrogate"),
    ],
)
def test_bad_user_ids_are_refused(value: Any, error: type[Exception]) -> None:
    caught: list[BaseException] = []

    def set_user(session: Session, request: Request) -> str:
        try:
            session.user_id = value
        except Exception as exc:
            caught.append(exc)
        return "ok"

    client, _ = make_client({"/": set_user})
    client.get("/")
    assert len(caught) == 1 and isinstance(caught[0], error)


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


def test_metrics_refuse_an_unknown_counter_at_once() -> None:
    from wsgisession.events import Metrics

    with pytest.raises(KeyError, match="unknown counter 'lods'"):
        Metrics().count("lods")
