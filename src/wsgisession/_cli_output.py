"""How the ``wsgisession`` command writes for people: tables, times and progress.

What it writes for scripts (``--json``) is built next to each command in
:mod:`wsgisession.cli`; this module only lays text out for a terminal.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

from .users import SessionInfo

__all__ = ["Progress", "iso_time", "printable", "session_table", "table"]

#: The longest user agent a session listing shows; ``--json`` gives it whole.
AGENT_WIDTH: Final = 60


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """*rows* under *header*, each column as wide as its widest cell, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def session_table(infos: Sequence[SessionInfo], now: float) -> str:
    """A user's sessions as a table: handle, remember-me, times relative to *now*, and
    the address and user agent when any session recorded them (``track_clients``)."""
    header = ["HANDLE", "REMEMBERED", "CREATED", "LAST SEEN", "EXPIRES"]
    clients = any(info.remote_addr or info.user_agent for info in infos)
    if clients:
        header += ["ADDRESS", "USER AGENT"]
    rows = []
    for info in infos:
        row = [
            info.handle,
            "yes" if info.remembered else "no",
            relative_time(info.created_at, now),
            relative_time(info.last_seen, now),
            relative_time(info.expires_at, now),
        ]
        if clients:
            agent = printable(info.user_agent or "-")
            if len(agent) > AGENT_WIDTH:
                agent = agent[: AGENT_WIDTH - 1] + "…"
            row += [printable(info.remote_addr or "-"), agent]
        rows.append(row)
    return table(header, rows)


def relative_time(timestamp: float, now: float) -> str:
    """*timestamp* as a terminal shows it, in its largest whole unit: ``5m ago``, ``in 29d``.

    A time a record should never hold (infinity, NaN: changed by hand) is shown as
    ``never``, rather than failing the listing.
    """
    if not math.isfinite(timestamp):
        return "never"
    seconds = round(timestamp - now)
    if abs(seconds) < 1:
        return "now"
    amount = abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if amount >= size:
            text = f"{amount // size}{unit}"
            break
    return f"in {text}" if seconds > 0 else f"{text} ago"


def iso_time(timestamp: float) -> str | None:
    """*timestamp* in ISO 8601, UTC, to the second: ``2025-01-31T12:00:00Z``.

    ``None`` for a time no date holds (past the year 9999, infinity: a record changed
    by hand), rather than failing the listing.
    """
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


def printable(text: str) -> str:
    """*text* with every character a terminal would act on written as an escape.

    A user agent is whatever a client sent; printed raw, escape sequences in it could
    rewrite the operator's terminal.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


class Progress:
    """A running count on one line of stderr, rewritten in place, for long jobs.

    *describe* turns the count into the line. Make one only when stderr is a terminal
    (:meth:`on_terminal`): a log or a pipe gets the final line alone.
    """

    def __init__(self, describe: Callable[[int], str]) -> None:
        self._describe = describe
        self._shown = False

    @classmethod
    def on_terminal(cls, describe: Callable[[int], str]) -> Progress | None:
        """A progress line if stderr is a terminal, else ``None``."""
        return cls(describe) if sys.stderr is not None and sys.stderr.isatty() else None

    def __call__(self, n: int) -> None:
        sys.stderr.write("\r" + self._describe(n))
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the line, so the result or an error prints on a clean one."""
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
