"""Calling WSGI apps in process and timing them in interleaved, shuffled rounds.

The machine's CPU speed swings in short episodes, so no contender is timed in one long
run: each round runs one short batch of every contender, in an order shuffled afresh
each round, and the figures are medians over rounds. Ratios are taken within a round
(both sides saw the same CPU) and their median reported. GC stays on.
"""

from __future__ import annotations

import io
import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_INPUT = io.BytesIO(b"")


def base_environ(**extra: Any) -> dict[str, Any]:
    """Return the environ a WSGI server would build for ``GET /`` over plain http."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "bench/1.0",
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": _INPUT,
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    environ.update(extra)
    return environ


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def run(app: WSGIApp, environ: Mapping[str, Any] | Sequence[Mapping[str, Any]], n: int) -> float:
    """Call *app* *n* times, as a server would, and return the seconds it took.

    With a list of environs, the calls cycle through them.
    """
    copy = dict.copy
    bases = [dict(e) for e in environ] if isinstance(environ, list) else [dict(environ)]
    count = len(bases)
    start_response = _start_response
    start = time.perf_counter()
    for i in range(n):
        body = app(copy(bases[i % count]), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return time.perf_counter() - start


def request(app: WSGIApp, environ: Mapping[str, Any]) -> Callable[[], None]:
    """One request of *app*, made as :func:`run` makes each: a fresh copy of *environ*
    per call, the body iterated and closed."""
    base = dict(environ)

    def one() -> None:
        body = app(dict(base), _start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    return one


@dataclass
class Response:
    """What one call of an app answered, for the untimed checks."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]


def call(app: WSGIApp, environ: Mapping[str, Any]) -> Response:
    """Call *app* once and return its status, headers and body; raise on a 5xx."""
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, list(headers)
        return None

    body = app(dict(environ), start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    response = Response(seen["status"], seen["headers"], data)
    if not response.status.startswith(("2", "3")):
        raise RuntimeError(f"benchmark app answered {response.status}: {data[:200]!r}")
    return response


@dataclass
class Contender:
    """One app in a comparison, with the environ it is called with."""

    name: str
    app: WSGIApp
    environ: dict[str, Any] | list[dict[str, Any]]
    batch: int = 0


@dataclass
class Timings:
    """Seconds per request of each contender, one value per round."""

    rounds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.rounds[name])

    def spread(self, name: str) -> tuple[float, float]:
        """The 25th and 75th percentiles over rounds."""
        values = sorted(self.rounds[name])
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        return q[0], q[2]

    def paired(self, fn: Callable[[dict[str, float]], float | None]) -> float | None:
        """The median over rounds of ``fn(round)``, where a round maps names to seconds."""
        names = list(self.rounds)
        count = len(self.rounds[names[0]])
        values = []
        for i in range(count):
            value = fn({name: self.rounds[name][i] for name in names})
            if value is not None:
                values.append(value)
        return statistics.median(values) if values else None

    def overhead(self, name: str, floor: str) -> float:
        """Median over rounds of ``name - floor``, seconds per request."""
        value = self.paired(lambda r: r[name] - r[floor])
        assert value is not None
        return value

    def overhead_ratio(self, name: str, other: str, floor: str) -> float | None:
        """Median over rounds of ``(name - floor) / (other - floor)``."""

        def ratio(r: dict[str, float]) -> float | None:
            below = r[other] - r[floor]
            return None if below <= 0 else (r[name] - r[floor]) / below

        return self.paired(ratio)


def calibrate(contender: Contender, target: float) -> int:
    """Return how many requests of *contender* take about *target* seconds."""
    run(contender.app, contender.environ, 3)  # warm caches, connections, imports
    n = 1
    while True:
        took = run(contender.app, contender.environ, n)
        if took >= target / 4 or n >= 1 << 20:
            break
        n *= 4 if took < target / 40 else 2
    per_request = took / n
    return max(1, round(target / per_request))


def interleave(
    contenders: Sequence[Contender],
    *,
    rounds: int,
    batch_seconds: float,
    on_round: Callable[[int], None] | None = None,
) -> Timings:
    """Time *contenders* in *rounds* rounds of one batch each, in an order shuffled
    afresh each round (from a fixed seed, so runs repeat).

    Not merely rotated: a rotation keeps every contender's neighbours, and the one that
    runs after another library finds the caches cold for its own code, where its twin
    run just after it finds them warm. A contender paired with the one it always
    followed would carry that cost in every round.
    """
    for contender in contenders:
        contender.batch = calibrate(contender, batch_seconds)
    timings = Timings({c.name: [] for c in contenders})
    for index in range(rounds):
        order = list(contenders)
        random.Random(f"round {index}").shuffle(order)
        for contender in order:
            took = run(contender.app, contender.environ, contender.batch)
            timings.rounds[contender.name].append(took / contender.batch)
        if on_round is not None:
            on_round(index)
    return timings
