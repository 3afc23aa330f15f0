"""What ``load.py`` reports: one row per run, their medians, and wsgisession against each peer.

A run is one library on one store under one server for the given seconds. With
``--repeat N`` each library runs N times per store and server, in rotating order, and
the summary gives the median requests/s, p50 and p99 of those runs beside the *sum* of
their errors, stale reads and lost updates: a check that failed once failed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass
class Row:
    """The figures of one run: one library on one store under one server."""

    library: str
    store: str
    server: str
    round: int
    #: Its place in the round's order (0 ran first).
    position: int
    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    stale_reads: int
    lost_updates: int
    processes: int
    first_error: str | None

    @property
    def failed(self) -> bool:
        """Whether a request failed, read stale data or lost an update, or none ran."""
        return bool(self.errors or self.stale_reads or self.lost_updates or not self.requests)


@dataclass
class Summary:
    """One library on one store under one server, over its rounds."""

    library: str
    store: str
    server: str
    rounds: int
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    stale_reads: int
    lost_updates: int
    processes: int
    first_error: str | None


@dataclass
class Comparison:
    """wsgisession against one peer on one store under one server."""

    store: str
    server: str
    peer: str
    #: wsgisession's median requests/s over the peer's: above 1 is more.
    throughput_ratio: float
    #: The peer's median p99 over wsgisession's: above 1 is a lower p99 for us.
    p99_ratio: float
    #: Rounds in which wsgisession had both more requests/s and a lower p99.
    rounds_won: int
    rounds: int
    #: Whether the peer failed a check (errors, stale reads, lost updates) in any round.
    peer_failed: bool

    @property
    def met(self) -> bool:
        """More requests per second and a lower p99 than the peer, on the medians."""
        return self.throughput_ratio > 1 and self.p99_ratio > 1


def summarize(rows: list[Row], libraries: list[str]) -> list[Summary]:
    """The median of each library's rounds per store and server.

    Stores and servers come in the order they ran, the libraries of each in the order
    of *libraries*, whatever order they ran in.
    """
    groups: dict[tuple[str, str], dict[str, list[Row]]] = {}
    for row in rows:
        groups.setdefault((row.store, row.server), {}).setdefault(row.library, []).append(row)
    ordered = [
        (store, server, library, by_library[library])
        for (store, server), by_library in groups.items()
        for library in sorted(by_library, key=libraries.index)
    ]
    summaries = []
    for store, server, library, runs in ordered:
        errors = [r.first_error for r in runs if r.first_error]
        summaries.append(
            Summary(
                library=library,
                store=store,
                server=server,
                rounds=len(runs),
                requests=sum(r.requests for r in runs),
                requests_per_second=round(
                    statistics.median(r.requests_per_second for r in runs), 1
                ),
                p50_ms=round(statistics.median(r.p50_ms for r in runs), 2),
                p99_ms=round(statistics.median(r.p99_ms for r in runs), 2),
                errors=sum(r.errors for r in runs),
                stale_reads=sum(r.stale_reads for r in runs),
                lost_updates=sum(r.lost_updates for r in runs),
                processes=max(r.processes for r in runs),
                first_error=errors[0] if errors else None,
            )
        )
    return summaries


def compare(
    rows: list[Row], summaries: list[Summary], ours: str = "wsgisession"
) -> list[Comparison]:
    """wsgisession against every other library, per store and server it ran on."""
    by_key = {(s.store, s.server, s.library): s for s in summaries}
    by_round = {(r.store, r.server, r.library, r.round): r for r in rows}
    comparisons = []
    for s in summaries:
        mine = by_key.get((s.store, s.server, ours))
        if s.library == ours or mine is None:
            continue
        won = 0
        paired = 0
        for r in rows:
            if (r.store, r.server, r.library) != (s.store, s.server, s.library):
                continue
            our_run = by_round.get((r.store, r.server, ours, r.round))
            if our_run is None:
                continue
            paired += 1
            if our_run.requests_per_second > r.requests_per_second and our_run.p99_ms < r.p99_ms:
                won += 1
        comparisons.append(
            Comparison(
                store=s.store,
                server=s.server,
                peer=s.library,
                throughput_ratio=_ratio(mine.requests_per_second, s.requests_per_second),
                p99_ratio=_ratio(s.p99_ms, mine.p99_ms),
                rounds_won=won,
                rounds=paired,
                peer_failed=bool(s.errors or s.stale_reads or s.lost_updates),
            )
        )
    return comparisons


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("inf")


def markdown(summaries: list[Summary]) -> str:
    """The summaries as a Markdown table, a row per library."""
    lines = [
        "| store | server | library | rounds | requests/s | p50 ms | p99 ms | errors "
        "| stale reads | lost updates | processes |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.store} | {s.server} | {s.library} | {s.rounds} "
            f"| {s.requests_per_second:.0f} | {s.p50_ms:.1f} | {s.p99_ms:.1f} | {s.errors} "
            f"| {s.stale_reads} | {s.lost_updates} | {s.processes} |"
        )
    return "\n".join(lines)


def comparison_markdown(comparisons: list[Comparison]) -> str:
    """wsgisession against each peer, and whether the target is met, as Markdown."""
    if not comparisons:
        return "No peer ran beside wsgisession, so there is nothing to compare."
    lines = [
        "| store | server | peer | requests/s, ours ÷ peer | p99, peer ÷ ours "
        "| more requests/s | lower p99 | both, rounds | target |",
        "|---|---|---|--:|--:|---|---|--:|---|",
    ]
    for c in comparisons:
        verdict = "met" if c.met else "missed"
        if c.peer_failed:
            verdict += " (the peer failed a check)"
        lines.append(
            f"| {c.store} | {c.server} | {c.peer} | {c.throughput_ratio:.2f}× "
            f"| {c.p99_ratio:.2f}× | {_yes(c.throughput_ratio > 1)} | {_yes(c.p99_ratio > 1)} "
            f"| {c.rounds_won} of {c.rounds} | {verdict} |"
        )
    met = sum(c.met for c in comparisons)
    lines.append("")
    lines.append(
        f"Target (more requests/s and a lower p99 than the peer, on the medians): met in "
        f"{met} of {len(comparisons)} comparisons."
    )
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
