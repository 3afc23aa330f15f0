"""The main flows through the middleware, on every store."""

from __future__ import annotations

import threading
from typing import Any

from werkzeug.test import Client
from werkzeug.wrappers import Request

from tests.conftest import FakeClock
from tests.helpers import body, counter, dump, holds_no_session, make_client, set_cookies
from wsgisession import Session
from wsgisession.ids import store_key
from wsgisession.stores import Store

THREADS = 16
WRITES_EACH = 5


def login(session: Session, request: Request) -> str:
    session.regenerate()
    session["user"] = request.args.get("user", "ann")
    session.remember = request.args.get("remember") == "1"
    session.set("flash", "welcome", timeout=30)
    return "ok"


def logout(session: Session, request: Request) -> str:
    session.invalidate()
    return "bye"


def put(session: Session, request: Request) -> str:
    session[request.args["key"]] = request.args["value"]
    return "ok"


ROUTES = {"/inc": counter, "/": dump, "/login": login, "/logout": logout, "/put": put}


def client_for(store: Store, **options: Any) -> Client:
    client, _ = make_client(ROUTES, store=store, **options)
    return client


def test_counter(store: Store) -> None:
    client = client_for(store)
    assert [body(client.get("/inc")) for _ in range(3)] == [1, 2, 3]


def test_login_regenerates_and_old_id_is_dead(store: Store) -> None:
    client = client_for(store)
    client.get("/inc")
    planted = client.get_cookie("session_id")
    assert planted is not None
    client.get("/login")
    after = client.get_cookie("session_id")
    assert after is not None and after.value != planted.value
    assert body(client.get("/")) == {"n": 1, "user": "ann", "flash": "welcome"}
    old_key = store_key(planted.value.rsplit(".", 1)[0])
    assert holds_no_session(store, old_key)
    attacker = client_for(store)
    attacker.set_cookie("session_id", planted.value)
    assert body(attacker.get("/")) == {}


def test_remember_me_outlives_the_idle_timeout(store: Store, clock: FakeClock) -> None:
    client = client_for(store, timeout=60, remember_me_timeout=3600)
    [header] = set_cookies(client.get("/login?remember=1"))
    assert "Max-Age=3600" in header
    clock.advance(600)
    assert body(client.get("/"))["user"] == "ann"

    forgetful = client_for(store, timeout=60, remember_me_timeout=3600)
    forgetful.get("/login")
    clock.advance(61)
    assert body(forgetful.get("/")) == {}


def test_per_key_timeout_and_idle_expiry(store: Store, clock: FakeClock) -> None:
    client = client_for(store, timeout=100)
    client.get("/login")
    assert "flash" in body(client.get("/"))
    clock.advance(31)
    assert body(client.get("/")) == {"user": "ann"}
    clock.advance(101)
    response = client.get("/")
    assert body(response) == {}
    assert "Max-Age=0" in set_cookies(response)[0]


def test_logout_ends_the_session_everywhere(store: Store) -> None:
    client = client_for(store)
    client.get("/login")
    cookie = client.get_cookie("session_id")
    assert cookie is not None
    other_tab = client_for(store)
    other_tab.set_cookie("session_id", cookie.value)
    client.get("/logout")
    assert body(other_tab.get("/")) == {}
    assert store.load(store_key(cookie.value.rsplit(".", 1)[0])) is None


def test_two_interleaved_requests_keep_both_keys(store: Store) -> None:
    inner: dict[str, Client] = {}

    def slow(session: Session, request: Request) -> str:
        session.get("n")
        inner["twin"].get("/put?key=fast&value=1")
        session["slow"] = "1"
        return "ok"

    client, middleware = make_client({**ROUTES, "/slow": slow}, store=store)
    client.get("/inc")
    cookie = client.get_cookie("session_id")
    assert cookie is not None
    inner["twin"] = Client(middleware)
    inner["twin"].set_cookie("session_id", cookie.value)
    client.get("/slow")
    assert body(client.get("/")) == {"n": 1, "fast": "1", "slow": "1"}


def test_sixteen_threads_writing_distinct_keys_lose_nothing(store: Store) -> None:
    """Every request merges its own key; no write may be lost however they interleave."""
    client, middleware = make_client(ROUTES, store=store)
    client.get("/inc")
    cookie = client.get_cookie("session_id")
    assert cookie is not None
    barrier = threading.Barrier(THREADS)
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            own = Client(middleware)
            own.set_cookie("session_id", cookie.value)
            barrier.wait()
            for i in range(WRITES_EACH):
                response = own.get(f"/put?key=t{n}-{i}&value={i}")
                assert response.status_code == 200
        except BaseException as exc:  # handed to the test thread below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]
    expected = {f"t{n}-{i}": str(i) for n in range(THREADS) for i in range(WRITES_EACH)}
    assert body(client.get("/")) == {"n": 1, **expected}
