"""The scenario x store comparison: seeding, the untimed counting pass, the timed rounds."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from _contenders import FLASK, WSGI, Backends, Built, build_flask, build_wsgi
from _counting import counting, server_commands
from _scenarios import CLOCK, OTHER_COOKIES, SCENARIOS, Scenario, ticking
from _timing import Contender, Timings, base_environ, call, interleave, run

import wsgisession._clock

#: Requests per contender in the counting pass; counts are reported per request.
COUNT_REQUESTS = 4


def applies(name: str, scenario: str) -> bool:
    """Whether contender *name* takes part in *scenario*."""
    if name == "passthrough":
        return scenario == "untouched"  # it has no session to read or write
    if name == "raw":
        return scenario != "untouched"  # untouched has no store work to do by hand
    if scenario == "refresh" and name in ("beaker", "flask-session", "flask-cookie"):
        return False  # they rewrite the session on every read: see "read"
    if scenario == "big" and name == "flask-cookie":
        return False  # 100 KB does not fit in a cookie (browsers stop at 4 KB)
    return True


@dataclass
class Cell:
    """The results of one scenario on one store."""

    scenario: str
    store: str
    wsgi: Timings | None = None
    flask: Timings | None = None
    #: contender -> counter of what one request sent, averaged over the pass.
    counts: dict[str, dict[str, float]] = field(default_factory=dict)
    #: contender -> whether the response carried a Set-Cookie header.
    set_cookie: dict[str, bool] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def _scenario_clock(scenario: Scenario) -> Iterator[None]:
    """Move wsgisession's clock past half-life on every refresh request."""
    if scenario.name != "refresh":
        yield
        return
    real = wsgisession._clock.now
    wsgisession._clock.now = CLOCK.now
    try:
        yield
    finally:
        wsgisession._clock.now = real


class Comparison:
    """Every contender on one store, built once and reused for each scenario."""

    def __init__(self, store: str, backends: Backends) -> None:
        self.store = store
        self.built: dict[str, Built] = {}
        for name in WSGI:
            wsgi = build_wsgi(name, store, backends)
            if wsgi is not None:  # a peer without a backend for this store
                self.built[name] = wsgi
        for name in FLASK:
            self.built[name] = build_flask(name, store, backends)

    def environ(self, built: Built, scenario: Scenario) -> dict[str, Any]:
        cookie = ""
        if scenario.cookie and built.cookie is not None:
            CLOCK.offset = 0.0
            cookie = "; " + built.seed(scenario.seed)
        return base_environ(
            HTTP_COOKIE=OTHER_COOKIES + cookie,
            **{"bench.action": scenario.action, "bench.scenario": scenario.name},
        )

    def run(self, scenario_name: str, *, rounds: int, batch_seconds: float) -> Cell:
        scenario = SCENARIOS[scenario_name]
        cell = Cell(scenario.name, self.store)
        if scenario.name == "untouched":
            # Its targets are a few percent of Flask's time or a fraction of a
            # microsecond: worth three times the rounds, which cost little here.
            rounds *= 3
        with _scenario_clock(scenario):
            groups: dict[str, list[Contender]] = {"wsgi": [], "flask": []}
            for name, built in self.built.items():
                if not applies(name, scenario.name):
                    continue
                environ = self.environ(built, scenario)
                family = "flask" if name in FLASK else "wsgi"
                app = built.app
                if scenario.name == "refresh" and built.middleware is not None:
                    app = ticking(app)
                groups[family].append(Contender(name, app, environ))
                self._count(cell, built, app, environ)
            cell.wsgi = interleave(groups["wsgi"], rounds=rounds, batch_seconds=batch_seconds)
            cell.flask = interleave(groups["flask"], rounds=rounds, batch_seconds=batch_seconds)
            for contender in groups["wsgi"] + groups["flask"]:
                cell.batches[contender.name] = contender.batch
        return cell

    def _count(self, cell: Cell, built: Built, app: Any, environ: dict[str, Any]) -> None:
        """The untimed pass: what one request sends, and whether it sets a cookie."""
        # Connections open, scripts loaded, statements prepared (psycopg does it on the
        # fifth run), caches warm.
        run(app, environ, 8)
        response = call(app, environ)
        cell.set_cookie[built.name] = any(
            value.lstrip().startswith(built.cookie + "=")
            for value in response.header_values("Set-Cookie")
            if built.cookie is not None
        )
        with counting() as seen:
            run(app, environ, COUNT_REQUESTS)
        counts: dict[str, float] = {k: v / COUNT_REQUESTS for k, v in seen.items()}
        if built.redis:
            client = built.redis[0]
            commands = server_commands(
                client, lambda: run(app, environ, COUNT_REQUESTS), repeats=3
            )
            for command, calls in commands.items():
                counts["redis_server:" + command] = calls / COUNT_REQUESTS
            counts["redis_server_commands"] = sum(commands.values()) / COUNT_REQUESTS
        cell.counts[built.name] = counts


def summary_counts(counts: dict[str, float]) -> Counter[str]:
    """The headline numbers of one contender's counts."""
    out: Counter[str] = Counter()
    for key in (
        "redis_round_trips",
        "redis_server_commands",
        "memcached_round_trips",
        "sql_statements",
        "sql_begin",
        "sql_commit",
        "sql_rollback",
        "sql_pool_reset",
        "sql_ping",
        "files_opened",
    ):
        if counts.get(key):
            out[key] = counts[key]
    return out
