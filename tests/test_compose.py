"""Writes that compose: apply, incr, append, flash messages, and in-place changes.

The behaviour is in docs/behaviour.rst, section "Writes that compose": an operation is
re-applied at save time to what the store holds then, so concurrent counters, lists and
flash messages lose nothing; a value changed in place is saved without ``modified``.
"""

from __future__ import annotations

import decimal
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from tests.helpers import (
    SECRET,
    CountingStore,
    HTTPBrowser,
    body,
    deletes_the_cookie,
    dump,
    key_of,
    logout,
    make_client,
    routed_app,
    run_together,
    serving,
    set_cookies,
    twin,
)
from wsgisession import Session, SessionMiddleware
from wsgisession.stores import Store


def _incr(session: Session, request: Request) -> Any:
    return session.incr(request.args.get("k", "n"), int(request.args.get("by", "1")))


def _append(session: Session, request: Request) -> Any:
    return session.append(request.args.get("k", "items"), request.args["item"])


def _flash(session: Session, request: Request) -> str:
    session.flash(request.args["m"], request.args.get("c", "message"))
    return "ok"


def _pop(session: Session, request: Request) -> Any:
    return session.pop_flashes(request.args.get("c"))


def _put(session: Session, request: Request) -> str:
    session[request.args["k"]] = int(request.args["v"])
    return "ok"


def _cart(session: Session, request: Request) -> str:
    session["cart"] = {"items": [], "prefs": {"theme": "light"}}
    return "ok"


def _add_in_place(session: Session, request: Request) -> str:
    session["cart"]["items"].append(request.args["item"])
    return "ok"


def _theme_in_place(session: Session, request: Request) -> str:
    # Through get(), which has its own lookup: what it hands out is watched the same.
    session.get("cart")["prefs"]["theme"] = request.args["theme"]
    return "ok"


def _read_nested(session: Session, request: Request) -> Any:
    return [session["cart"]["items"], dict(session)]


ROUTES = {
    "/": dump,
    "/incr": _incr,
    "/append": _append,
    "/flash": _flash,
    "/pop": _pop,
    "/put": _put,
    "/cart": _cart,
    "/add": _add_in_place,
    "/theme": _theme_in_place,
    "/read": _read_nested,
    "/logout": logout,
}


def _while_another_runs(handler_before: Any, other: Any, handler_after: Any) -> Any:
    """A handler that runs *handler_before*, then lets *other* (another request on the
    same session) run to its end, then runs *handler_after*."""

    def handler(session: Session, request: Request) -> Any:
        session.get("n")  # loaded before the other request
        if handler_before is not None:
            handler_before(session)
        other()
        return handler_after(session)

    return handler


def _slow_client(
    store: Store | str, before: Any, other_path: str, after: Any
) -> tuple[Client, list[Any]]:
    """A client whose ``/slow`` request interleaves with another tab's *other_path*, and
    the list of what that other request answered."""
    tabs: dict[str, Client] = {}
    answers: list[Any] = []
    slow = _while_another_runs(
        before, lambda: answers.append(body(tabs["other"].get(other_path))), after
    )
    client, _ = make_client({**ROUTES, "/slow": slow}, store=store)
    client.get("/put?k=start&v=1")
    tabs["other"] = twin(client)
    return client, answers


# -- the operations ------------------------------------------------------------------------


def test_incr_starts_at_zero_counts_by_n_and_returns_the_sum() -> None:
    client, _ = make_client(ROUTES)
    assert body(client.get("/incr")) == 1
    assert body(client.get("/incr?by=5")) == 6
    assert body(client.get("/incr?k=other&by=-2")) == -2
    assert body(client.get("/")) == {"n": 6, "other": -2}


def test_append_starts_a_list_and_keeps_order() -> None:
    client, _ = make_client(ROUTES)
    assert body(client.get("/append?item=a")) == ["a"]
    assert body(client.get("/append?item=b")) == ["a", "b"]
    assert body(client.get("/")) == {"items": ["a", "b"]}


def test_append_to_something_other_than_a_list_raises_type_error() -> None:
    def append_to_text(session: Session, request: Request) -> str:
        session["t"] = "text"
        with pytest.raises(TypeError, match="needs a list under its key, found str"):
            session.append("t", 1)
        session["t"] = (1, 2)  # made a list, silently, where the docs say it raises
        with pytest.raises(TypeError, match="needs a list under its key, found tuple"):
            session.append("t", 3)
        return "ok"

    client, _ = make_client({"/": append_to_text})
    assert client.get("/").status_code == 200


def test_apply_returns_the_new_value_and_uses_default_for_a_missing_key() -> None:
    seen: list[Any] = []

    def handler(session: Session, request: Request) -> str:
        seen.append(session.apply("word", str.upper, default="none"))
        seen.append(session.apply("word", lambda v: v + "!"))
        return "ok"

    client, _ = make_client({"/": handler, "/dump": dump})
    client.get("/")
    assert seen == ["NONE", "NONE!"]
    assert body(client.get("/dump")) == {"word": "NONE!"}


def test_apply_on_a_key_whose_timeout_passed_starts_from_default_without_a_timeout(
    clock: Any,
) -> None:
    def short(session: Session, request: Request) -> str:
        session.set("n", 10, timeout=5)
        return "ok"

    client, _ = make_client({**ROUTES, "/short": short})
    client.get("/short")
    clock.advance(10)
    assert body(client.get("/incr")) == 1
    clock.advance(100)
    assert body(client.get("/")) == {"n": 1}


def test_apply_rejects_a_key_that_is_not_str() -> None:
    def handler(session: Session, request: Request) -> str:
        with pytest.raises(TypeError, match="session keys must be str"):
            session.apply(1, str)  # type: ignore[arg-type]
        return "ok"

    client, _ = make_client({"/": handler})
    assert client.get("/").status_code == 200


# -- composing with a concurrent request ----------------------------------------------------


def test_two_interleaved_incrs_both_count(store: Store) -> None:
    client, _ = _slow_client(store, None, "/incr", lambda s: s.incr("n"))
    assert body(client.get("/slow")) == 1  # what the slow request saw
    assert body(client.get("/")) == {"start": 1, "n": 2}


def test_two_interleaved_appends_both_land_in_order_of_saving(store: Store) -> None:
    client, _ = _slow_client(store, None, "/append?item=fast", lambda s: s.append("items", "slow"))
    client.get("/slow")
    assert body(client.get("/"))["items"] == ["fast", "slow"]


def test_an_append_whose_list_is_then_read_still_composes(store: Store) -> None:
    def slow(s: Session) -> None:
        s.append("items", "slow")
        assert s["items"][-1] == "slow"  # read, a container, unchanged in place

    client, _ = _slow_client(store, None, "/append?item=fast", slow)
    client.get("/slow")
    assert body(client.get("/"))["items"] == ["fast", "slow"]


@pytest.mark.parametrize(
    ("alter", "expected"),
    [
        pytest.param(
            lambda s: (s.append("cart", 1), s["cart"].append(2)), [0, 1, 2], id="append-then"
        ),
        pytest.param(
            lambda s: (s["cart"].append(2), s.append("cart", 1)), [0, 2, 1], id="then-append"
        ),
        pytest.param(
            lambda s: (s.apply("cart", lambda c: [*c, 1]), s.get("cart").insert(0, 2)),
            [2, 0, 1],
            id="apply-then-get",
        ),
        # The value an operation returns is the session's: changed in place, it was
        # lost, unless read again through the session.
        pytest.param(lambda s: s.append("cart", 1).append(2), [0, 1, 2], id="append-returned"),
        pytest.param(
            lambda s: s.apply("cart", lambda c: [*c, 1]).insert(0, 2),
            [2, 0, 1],
            id="apply-returned",
        ),
    ],
)
@pytest.mark.parametrize("forced", [False, True], ids=["plain", "modified"])
def test_a_value_also_changed_in_place_beside_an_operation_is_saved_as_left(
    store: Store, alter: Callable[[Session], object], expected: list[int], forced: bool
) -> None:
    # The operation alone, replayed on the stored value, would drop the change made in
    # place; the value is written whole instead, as an assignment would be.
    def seed(session: Session, request: Request) -> str:
        session["cart"] = [0]
        return "ok"

    def change(session: Session, request: Request) -> str:
        alter(session)
        session.modified = forced
        return "ok"

    client, _ = make_client({**ROUTES, "/seed": seed, "/change": change}, store=store)
    client.get("/seed")
    client.get("/change")
    assert body(client.get("/"))["cart"] == expected


@pytest.mark.parametrize("forced", [False, True], ids=["plain", "modified"])
@pytest.mark.parametrize(
    ("other_path", "kept"),
    [
        pytest.param("/add?item=fast", lambda d: d["cart"]["items"] == ["fast"], id="in-place"),
        pytest.param("/put?k=other&v=2", lambda d: d["other"] == 2, id="new-key"),
    ],
)
def test_a_pop_in_a_request_that_only_read_keeps_what_another_wrote_meanwhile(
    store: Store, forced: bool, other_path: str, kept: Callable[[dict[str, Any]], bool]
) -> None:
    # pop_flashes() saves at once, onto what the other request stored; the response's
    # save must still compare this request's values with what it loaded, not with that.
    def pop(s: Session) -> Any:
        popped = s.pop_flashes()
        s.modified = forced
        return popped

    client, _ = _slow_client(store, lambda s: s["cart"], other_path, pop)
    client.get("/cart")
    client.get("/flash?m=hi")
    assert body(client.get("/slow")) == [["message", "hi"]]
    assert kept(body(client.get("/")))


def test_a_request_that_pops_then_fails_keeps_only_the_pop(store: Store) -> None:
    def fail(session: Session, request: Request) -> str:
        session["cart"]["items"].append("never saved")
        session.pop_flashes()
        raise RuntimeError("after the pop")

    client, _ = make_client({**ROUTES, "/fail": fail}, store=store)
    client.get("/cart")
    client.get("/flash?m=hi")
    with pytest.raises(RuntimeError, match="after the pop"):
        client.get("/fail")
    assert body(client.get("/pop")) == []
    assert body(client.get("/"))["cart"]["items"] == []


def test_an_operation_made_before_the_other_request_still_composes(store: Store) -> None:
    client, _ = _slow_client(store, lambda s: s.incr("n", 10), "/incr", lambda s: s.get("n"))
    client.get("/slow")
    assert body(client.get("/"))["n"] == 11


def test_a_whole_write_after_an_operation_wins_over_it(store: Store) -> None:
    def after(session: Session) -> str:
        session["n"] = 100
        return "ok"

    client, _ = _slow_client(store, lambda s: s.incr("n"), "/incr", after)
    client.get("/slow")
    assert body(client.get("/"))["n"] == 100


def test_a_delete_after_an_operation_wins_over_it(store: Store) -> None:
    def after(session: Session) -> str:
        del session["n"]
        return "ok"

    client, _ = _slow_client(store, lambda s: s.incr("n"), "/incr", after)
    client.get("/slow")
    assert "n" not in body(client.get("/"))


def test_an_operation_after_a_whole_write_applies_to_the_written_value(store: Store) -> None:
    def before(session: Session) -> None:
        session["n"] = 10

    client, _ = _slow_client(store, before, "/incr", lambda s: s.incr("n"))
    assert body(client.get("/slow")) == 11
    # The write is whole: the concurrent increment is overwritten, as by s["n"] = 11.
    assert body(client.get("/"))["n"] == 11


def test_an_operation_on_a_new_session_is_stored_whole() -> None:
    store = CountingStore()
    client, _ = make_client(ROUTES, store=store)
    client.get("/incr?by=3")
    client.get("/append?item=x")
    assert body(client.get("/")) == {"n": 3, "items": ["x"]}


def test_operations_interleaved_with_a_logout_do_not_bring_the_session_back(
    store: Store,
) -> None:
    client, _ = _slow_client(store, None, "/logout", lambda s: s.incr("n"))
    before = key_of(client)
    [header] = set_cookies(client.get("/slow"))
    assert deletes_the_cookie(header)
    assert store.load(before) is None


# -- flash messages -------------------------------------------------------------------------------


def test_flash_messages_pop_oldest_first_with_their_categories_then_are_gone(
    store: Store,
) -> None:
    client, _ = make_client(ROUTES, store=store)
    client.get("/flash?m=saved")
    client.get("/flash?m=careful&c=warning")
    assert body(client.get("/pop")) == [["message", "saved"], ["warning", "careful"]]
    assert body(client.get("/pop")) == []
    assert "_flashes" not in body(client.get("/"))


def test_pop_flashes_with_a_category_leaves_the_others(store: Store) -> None:
    client, _ = make_client(ROUTES, store=store)
    client.get("/flash?m=a&c=error")
    client.get("/flash?m=b")
    client.get("/flash?m=c&c=error")
    assert body(client.get("/pop?c=error")) == [["error", "a"], ["error", "c"]]
    assert body(client.get("/pop")) == [["message", "b"]]


def test_flash_and_pop_in_one_request_shows_the_message_and_stores_nothing() -> None:
    store = CountingStore()

    def flash_and_pop(session: Session, request: Request) -> Any:
        session.flash("hello")
        return session.pop_flashes()

    client, _ = make_client({**ROUTES, "/both": flash_and_pop}, store=store)
    assert body(client.get("/both")) == [["message", "hello"]]
    assert "save" not in store.calls  # a new session holding nothing is not stored
    client.get("/put?k=n&v=1")
    assert body(client.get("/both")) == [["message", "hello"]]
    assert body(client.get("/")) == {"n": 1}


def test_pop_takes_stored_messages_at_once_and_saves_once() -> None:
    store = CountingStore()
    client, _ = make_client(ROUTES, store=store)
    client.get("/flash?m=hi")
    store.calls.clear()
    assert body(client.get("/pop")) == [["message", "hi"]]
    assert store.calls.count("save") == 1


def test_two_tabs_popping_at_once_show_each_message_once(store: Store) -> None:
    def before(session: Session) -> None:
        session.flash("own")  # this request's own message, unseen by the other tab
        assert len(session["_flashes"]) == 2  # the stored message was loaded here too

    client, other = _slow_client(store, before, "/pop", Session.pop_flashes)
    client.get("/flash?m=stored")
    assert body(client.get("/slow")) == [["message", "own"]]
    assert other == [[["message", "stored"]]]
    assert body(client.get("/pop")) == []


def test_a_message_flashed_during_a_pop_waits_for_the_next(store: Store) -> None:
    client, _ = _slow_client(store, None, "/flash?m=late", lambda s: s.pop_flashes())
    client.get("/flash?m=early")
    assert body(client.get("/slow")) == [["message", "early"]]
    assert body(client.get("/pop")) == [["message", "late"]]


@pytest.mark.parametrize("forced", [False, True], ids=["plain", "modified"])
def test_a_message_flashed_after_a_pop_waits_for_the_next_whatever_the_popper_saves(
    store: Store, forced: bool
) -> None:
    # With modified = True, the popping request's save compared the queue with what it
    # loaded before the pop, and deleted the message flashed since.
    def keep_going(session: Session) -> str:
        session.modified = forced
        return "ok"

    client, _ = _slow_client(store, Session.pop_flashes, "/flash?m=late", keep_going)
    client.get("/flash?m=early")
    client.get("/slow")
    assert body(client.get("/pop")) == [["message", "late"]]


@pytest.mark.parametrize("forced", [False, True], ids=["plain", "modified"])
def test_a_message_another_request_popped_after_a_pop_stays_popped(
    store: Store, forced: bool
) -> None:
    # With modified = True, the queue as this request last saw it was written back whole,
    # and the message the other tab had shown came back, to be shown twice.
    def pop_mine(session: Session) -> None:
        session.pop_flashes("mine")

    def keep_going(session: Session) -> str:
        session.modified = forced
        return "ok"

    client, other = _slow_client(store, pop_mine, "/pop?c=theirs", keep_going)
    client.get("/flash?m=a&c=mine")
    client.get("/flash?m=b&c=theirs")
    client.get("/slow")
    assert other == [[["theirs", "b"]]]
    assert body(client.get("/pop")) == []


@pytest.mark.parametrize(
    ("other_path", "left"),
    [
        pytest.param("/flash?m=theirs&c=info", ["mine", "theirs", "own"], id="flashed-meanwhile"),
        pytest.param("/pop?c=info", ["own"], id="popped-meanwhile"),
    ],
)
def test_a_request_that_flashes_then_pops_a_category_keeps_the_others_queue(
    store: Store, other_path: str, left: list[str]
) -> None:
    # flash() went through append(), which marked the queue as handed out: the save
    # compared it with the queue before the pop, and wrote it whole, losing the
    # message flashed meanwhile, or bringing back the one popped meanwhile.
    def flash_own(session: Session) -> None:
        session.flash("own", "info")

    def pop_errors(session: Session) -> Any:
        return session.pop_flashes("error")

    client, _ = _slow_client(store, flash_own, other_path, pop_errors)
    client.get("/flash?m=mine&c=info")
    client.get("/flash?m=failed&c=error")
    assert body(client.get("/slow")) == [["error", "failed"]]
    assert [message for _, message in body(client.get("/pop"))] == left


def test_pop_on_a_session_logged_out_meanwhile_shows_nothing_and_expires_the_cookie(
    store: Store,
) -> None:
    client, _ = _slow_client(store, None, "/logout", lambda s: [s.pop_flashes(), dict(s)])
    client.get("/flash?m=gone")
    before = key_of(client)
    response = client.get("/slow")
    assert body(response) == [[], {}]
    [header] = set_cookies(response)
    assert deletes_the_cookie(header)
    assert store.load(before) is None


# -- in-place changes ------------------------------------------------------------------------


def test_a_nested_in_place_change_is_saved_without_modified(store: Store) -> None:
    client, _ = make_client(ROUTES, store=store)
    client.get("/cart")
    client.get("/add?item=apple")
    client.get("/theme?theme=dark")
    assert body(client.get("/"))["cart"] == {"items": ["apple"], "prefs": {"theme": "dark"}}


def test_a_request_that_only_reads_nested_values_writes_nothing() -> None:
    store = CountingStore()
    client, _ = make_client(ROUTES, store=store)
    client.get("/cart")
    store.calls.clear()
    client.get("/read")
    client.get("/")
    assert store.calls == ["load", "load"]


def test_an_in_place_change_merges_by_key_with_a_concurrent_request(store: Store) -> None:
    def add(session: Session) -> str:
        session["cart"]["items"].append("pear")
        return "ok"

    tabs: dict[str, Client] = {}
    slow = _while_another_runs(None, lambda: tabs["other"].get("/put?k=other&v=7"), add)
    client, _ = make_client({**ROUTES, "/slow": slow}, store=store)
    client.get("/cart")
    tabs["other"] = twin(client)
    client.get("/slow")
    data = body(client.get("/"))
    assert data["cart"]["items"] == ["pear"]
    assert data["other"] == 7


# A cart of a few KB: its save reuses the stored encoding of the keys it did not change.
BIG_CART = [{"sku": f"SKU-{i:04d}", "qty": 1, "price": 2.5} for i in range(100)]


def _big_cart(session: Session, request: Request) -> str:
    session["cart"] = {"items": list(BIG_CART), "note": "x" * 2000}
    session["n"] = 0
    return "ok"


def test_a_large_session_saves_an_in_place_change_beside_another_key(store: Store) -> None:
    def change(session: Session, request: Request) -> str:
        session["cart"]["items"][50]["qty"] = 9
        session["n"] = 1
        return "ok"

    client, _ = make_client({**ROUTES, "/big": _big_cart, "/change": change}, store=store)
    client.get("/big")
    client.get("/change")
    data = body(client.get("/"))
    assert data["cart"]["items"][50] == {"sku": "SKU-0050", "qty": 9, "price": 2.5}
    assert data["cart"]["items"][49] == BIG_CART[49]
    assert data["n"] == 1


def test_a_large_session_keeps_a_concurrent_change_to_a_key_it_only_read(store: Store) -> None:
    def other_cart(session: Session, request: Request) -> str:
        session["cart"] = {"items": ["other"]}
        return "ok"

    def read_then_count(session: Session) -> str:
        assert len(session["cart"]["items"]) == len(BIG_CART)
        session["n"] = 5
        return "ok"

    tabs: dict[str, Client] = {}
    slow = _while_another_runs(None, lambda: tabs["other"].get("/other"), read_then_count)
    routes = {**ROUTES, "/big": _big_cart, "/other": other_cart, "/slow": slow}
    client, _ = make_client(routes, store=store)
    client.get("/big")
    tabs["other"] = twin(client)
    client.get("/slow")
    assert body(client.get("/")) == {"cart": {"items": ["other"]}, "n": 5}


def test_an_in_place_change_to_an_equal_value_of_another_type_is_saved() -> None:
    # 1 == True would hide the change, but a 1 never comes back as True.
    def seed(session: Session, request: Request) -> str:
        session["a"] = [1, {"b": 2.0}]
        return "ok"

    def swap(session: Session, request: Request) -> str:
        session["a"][0] = True
        session["a"][1]["b"] = 2
        return "ok"

    def types(session: Session, request: Request) -> list[str]:
        return [type(session["a"][0]).__name__, type(session["a"][1]["b"]).__name__]

    client, _ = make_client({**ROUTES, "/seed": seed, "/swap": swap, "/types": types})
    client.get("/seed")
    client.get("/swap")
    assert body(client.get("/types")) == ["bool", "int"]


def _typed(value: Any) -> Any:
    """*value* with the type of everything in it, and dicts' key order, as JSON can say."""
    if isinstance(value, dict):
        return ["dict", [[k, _typed(v)] for k, v in value.items()]]
    if isinstance(value, list | tuple):
        return [type(value).__name__, [_typed(v) for v in value]]
    return [type(value).__name__, repr(value)]


@pytest.mark.parametrize("encrypt", [True, False], ids=["sealed", "unsealed"])
@pytest.mark.parametrize(
    ("beside", "options", "pop"),
    [
        # A record with a tagged value can't be taken apart by key: the values read
        # are compared with a fresh decode of it.
        pytest.param({"t": (1, 2)}, {}, False, id="record-with-a-tagged-value"),
        pytest.param({}, {"serializer": "pickle"}, False, id="pickle"),
        # pop_flashes() saves at once; the rest is compared with what that stored.
        pytest.param({}, {}, True, id="after-pop-flashes"),
    ],
)
def test_an_in_place_change_python_calls_equal_is_saved_exactly_whatever_the_record(
    encrypt: bool, beside: dict[str, Any], options: dict[str, Any], pop: bool
) -> None:
    def seed(session: Session, request: Request) -> str:
        session.update(beside)
        session["a"] = [1, 1, 0.0, {"x": 1, "y": 2}]
        session["money"] = [decimal.Decimal("1.0")]
        session.flash("hello")
        return "ok"

    def alter(session: Session, request: Request) -> str:
        if pop:
            session.pop_flashes()
        a = session["a"]
        a[0], a[1], a[2] = True, 1.0, -0.0
        a[3]["x"] = a[3].pop("x")
        session.get("money")[0] = decimal.Decimal("1.00")
        return "ok"

    def check(session: Session, request: Request) -> Any:
        return [_typed(session["a"]), _typed(session["money"])]

    routes = {**ROUTES, "/seed": seed, "/alter": alter, "/check": check}
    client, _ = make_client(routes, encrypt=encrypt, **options)
    client.get("/seed")
    client.get("/alter")
    expected = [_typed([True, 1.0, -0.0, {"y": 2, "x": 1}]), _typed([decimal.Decimal("1.00")])]
    assert body(client.get("/check")) == expected


_UUID_TEXT = "00000000-0000-0000-0000-000000000005"


def _as_tuple(data: dict[str, Any]) -> None:
    data["rows"][0] = tuple(data["rows"][0])


def _as_uuid(data: dict[str, Any]) -> None:
    data["rows"][1][1] = uuid.UUID(_UUID_TEXT)


def _renamed(data: dict[str, Any]) -> None:
    data["named"]["new"] = data["named"].pop("old")


def _moved(data: dict[str, Any]) -> None:
    data["pairs"][1].insert(0, data["pairs"][0].pop())


def _copied(data: dict[str, Any]) -> None:
    data["rows"][2] = list(data["rows"][2])


@pytest.mark.parametrize("padding", [0, 4000], ids=["small", "large"])
@pytest.mark.parametrize("also_write", [False, True], ids=["only-in-place", "beside-a-write"])
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(_as_tuple, lambda d: d["rows"][0] == ("a", _UUID_TEXT, None), id="tuple"),
        pytest.param(_as_uuid, lambda d: d["rows"][1][1] == uuid.UUID(_UUID_TEXT), id="uuid"),
        pytest.param(_renamed, lambda d: d["named"] == {"new": 1}, id="renamed-key"),
        pytest.param(_moved, lambda d: d["pairs"] == [[1], [2, 3]], id="moved-between-lists"),
        pytest.param(_copied, lambda d: d["rows"][2] == ["a", _UUID_TEXT, None], id="equal-copy"),
    ],
)
def test_an_in_place_change_that_keeps_the_json_or_its_length_is_saved_exactly(
    store: Store, padding: int, also_write: bool, change: Any, expected: Any
) -> None:
    # Changes a save can only find from the objects themselves (a tuple or a UUID
    # encodes as the list or string it replaced) or from the text (a key renamed or an
    # item moved leaves every object where it was).
    def seed(session: Session, request: Request) -> str:
        session["data"] = {
            "rows": [["a", _UUID_TEXT, None] for _ in range(3)],
            "named": {"old": 1},
            "pairs": [[1, 2], [3]],
            "pad": "x" * padding,
        }
        return "ok"

    def alter(session: Session, request: Request) -> str:
        change(session["data"])
        if also_write:
            session["n"] = 1
        return "ok"

    def check(session: Session, request: Request) -> bool:
        return bool(expected(session["data"]))

    routes = {**ROUTES, "/seed": seed, "/alter": alter, "/check": check}
    client, _ = make_client(routes, store=store)
    client.get("/seed")
    client.get("/alter")
    assert body(client.get("/check")) is True


def test_a_nan_put_in_place_of_none_is_refused_not_saved_as_null() -> None:
    # orjson writes NaN as null, so the text alone would take it for the None it replaced.
    def seed(session: Session, request: Request) -> str:
        session["data"] = {"values": [None, 1.5], "pad": "x" * 4000}
        return "ok"

    def alter(session: Session, request: Request) -> str:
        session["data"]["values"][0] = float("nan")
        return "ok"

    client, _ = make_client({**ROUTES, "/seed": seed, "/alter": alter})
    client.get("/seed")
    with pytest.raises(TypeError, match="'data'"):
        client.get("/alter")
    assert body(client.get("/"))["data"]["values"] == [None, 1.5]


def test_modified_still_forces_a_save() -> None:
    store = CountingStore()

    def touch(session: Session, request: Request) -> str:
        session.get("n")
        session.modified = True
        return "ok"

    client, _ = make_client({**ROUTES, "/touch": touch}, store=store)
    client.get("/incr")
    store.calls.clear()
    client.get("/touch")
    assert store.calls == ["load", "save"]


# -- many requests at once, on every store -----------------------------------------------------


WRITERS, EACH = 16, 30


def _serve_many(store: Store, work: Any, threads: int = WRITERS) -> Any:
    """Run *work(browser, n)* in *threads* threads against a real server on *store*;
    return the session's data at the end."""
    middleware = SessionMiddleware(
        routed_app(ROUTES), secret_key=SECRET, store=store, cleanup_interval=0
    )
    with serving(middleware, threads=threads) as address:
        first = HTTPBrowser(address)
        assert first.get("/put?k=start&v=1")[0] == 200

        def run(n: int) -> None:
            browser = HTTPBrowser(address, first.cookie)
            try:
                work(browser, n)
            finally:
                browser.close()

        failures = run_together(threads, run)
        assert not failures, failures[0]
        _, _, final = first.get("/")
        first.close()
    return final


def test_sixteen_threads_incrementing_one_key_count_every_request(store: Store) -> None:
    def work(browser: HTTPBrowser, n: int) -> None:
        for _ in range(EACH):
            status, _, answer = browser.get("/incr")
            assert status == 200, answer

    final = _serve_many(store, work)
    assert final["n"] == WRITERS * EACH


def test_sixteen_threads_appending_to_one_list_keep_every_item_once(store: Store) -> None:
    def work(browser: HTTPBrowser, n: int) -> None:
        for i in range(EACH):
            status, _, answer = browser.get(f"/append?item={n}-{i}")
            assert status == 200, answer

    final = _serve_many(store, work)
    items = final["items"]
    assert len(items) == WRITERS * EACH
    assert sorted(items) == sorted(f"{n}-{i}" for n in range(WRITERS) for i in range(EACH))
    # Each writer's items keep their order.
    for n in range(WRITERS):
        mine = [item for item in items if item.startswith(f"{n}-")]
        assert mine == [f"{n}-{i}" for i in range(EACH)]


def test_sixteen_writers_and_sixteen_readers_show_each_flash_exactly_once(store: Store) -> None:
    shown: list[str] = []
    lock = threading.Lock()
    writers_done = threading.Event()
    finished: list[int] = []

    def work(browser: HTTPBrowser, n: int) -> None:
        if n < WRITERS:
            for i in range(EACH):
                status, _, answer = browser.get(f"/flash?m={n}-{i}")
                assert status == 200, answer
            with lock:
                finished.append(n)
                if len(finished) == WRITERS:
                    writers_done.set()
            return
        # Readers pop until the writers are done and one last pop finds nothing.
        while True:
            done = writers_done.is_set()
            status, _, answer = browser.get("/pop")
            assert status == 200, answer
            with lock:
                shown.extend(message for _, message in answer)
            if done and not answer:
                return

    final = _serve_many(store, work, threads=2 * WRITERS)
    counts = Counter(shown)
    assert [m for m, c in counts.items() if c > 1] == []
    assert len(shown) == WRITERS * EACH
    assert "_flashes" not in final
