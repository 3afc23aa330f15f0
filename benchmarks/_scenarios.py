"""What the benchmark's requests do with their session, and the one handler they share.

Every contender runs the same handler; only the way it reaches the session differs.
The scenario travels in the environ (``bench.action``), so one app per contender and
store serves them all, and the floor pays the same lookups as everyone else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

#: The idle timeout every contender is configured with, in seconds.
TIMEOUT = 3600

#: Cookies a browser sends besides the session's, so cookie parsing has work to do.
OTHER_COOKIES = "_ga=GA1.2.1234567890.1700000000; csrftoken=Zm9vYmFyYmF6cXV4; theme=dark"

Action = Callable[[MutableMapping[str, Any]], bool]


class FakeClock:
    """wsgisession's clock in the refresh scenario: real time plus an offset.

    :func:`ticking` moves the offset forward by more than half the timeout before each
    request of one app, so that every request of that app reads its session past its
    half-life and extends it once.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


CLOCK = FakeClock()


def ticking(app: Callable[..., Any], step: float = 0.6 * TIMEOUT) -> Callable[..., Any]:
    """Wrap *app* so that each of its requests comes *step* seconds after the last.

    Each wrapped app keeps its own time (starting at offset 0, where sessions are
    seeded), so one contender's requests never age another's session.
    """
    offset = [0.0]

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        offset[0] += step
        CLOCK.offset = offset[0]
        return app(environ, start_response)

    return wrapped


def _untouched(s: MutableMapping[str, Any]) -> bool:
    return False


def _read(s: MutableMapping[str, Any]) -> bool:
    s["user"]
    return False


def _write(s: MutableMapping[str, Any]) -> bool:
    s["n"] = s.get("n", 0) + 1
    return True


def _new(s: MutableMapping[str, Any]) -> bool:
    s["user"] = "u-1"
    return True


def _refresh(s: MutableMapping[str, Any]) -> bool:
    s["user"]  # with wsgisession's clock moved past half-life by ticking()
    return False


def _big(s: MutableMapping[str, Any]) -> bool:
    s["cart"]
    s["n"] = s.get("n", 0) + 1
    return True


def cart(size: int) -> list[dict[str, Any]]:
    """A shopping cart whose JSON is about *size* bytes: typical session data."""
    items = []
    total = 2
    i = 0
    while total < size:
        item = {
            "sku": f"SKU-{i:06d}",
            "qty": i % 5 + 1,
            "price": round(3.5 + i * 0.17, 2),
            "title": f"Item number {i} of the catalogue",
            "gift": i % 7 == 0,
        }
        items.append(item)
        total += 104 + len(str(i)) * 2
        i += 1
    return items


@dataclass(frozen=True)
class Scenario:
    """One kind of request."""

    name: str
    title: str
    action: Action
    #: Whether the request carries the cookie of a stored session.
    cookie: bool
    #: What the stored session holds before the run.
    seed: dict[str, Any]
    #: The limit this scenario is compared to: "passthrough" or "raw".
    limit: str


BIG = 100_000
REFRESH_DATA = 2000

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("untouched", "untouched", _untouched, True, {"user": "u-1"}, "passthrough"),
        Scenario("read", "read one key", _read, True, {"user": "u-1", "n": 0}, "raw"),
        Scenario("write", "write one key", _write, True, {"user": "u-1", "n": 0}, "raw"),
        Scenario("new", "new session", _new, False, {}, "raw"),
        # 2 KB of data, so that a refresh that rewrote the record would show in the
        # bytes sent to the store.
        Scenario(
            "refresh",
            "read past half-life",
            _refresh,
            True,
            {"user": "u-1", "cart": cart(REFRESH_DATA)},
            "raw",
        ),
        Scenario(
            "big",
            "100 KB read+write",
            _big,
            True,
            {"user": "u-1", "n": 0, "cart": cart(BIG)},
            "raw",
        ),
    )
}


def handler(
    get_session: Callable[[dict[str, Any]], MutableMapping[str, Any]],
    save: Callable[[MutableMapping[str, Any]], None] | None = None,
) -> Callable[..., list[bytes]]:
    """Return the benchmark's WSGI app, reaching its session through *get_session*.

    *save* is called after a write, for libraries that need to be told (Beaker).
    An environ with ``bench.seed`` stores those items instead: how each contender's
    session is prepared, through its own code.
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seed = environ.get("bench.seed")
        if seed is not None:
            s = get_session(environ)
            s.update(seed)
            if save is not None:
                save(s)
        else:
            action = environ["bench.action"]
            if action is not _untouched and action(get_session(environ)) and save is not None:
                save(get_session(environ))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    return app


def floor_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The bare app with no session at all: the floor every contender is measured from."""
    environ.get("bench.seed")
    environ["bench.action"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
