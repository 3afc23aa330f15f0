"""The ``wsgisession`` command: check a configuration, purge and count sessions, manage users.

Exit status 0 on success, 1 when the store fails, 2 when the configuration is bad,
with one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

from .config import Config
from .errors import ConfigError, StoreError
from .purge import purge_expired
from .stores.base import Store, mask_url
from .users import check_user_id, list_user_sessions

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_STORE: Final = 1
EXIT_CONFIG: Final = 2


def _describe(config: Config) -> str:
    store = config.store
    return mask_url(store) if isinstance(store, str) else type(store).__name__


def _check(config: Config, store: Store, args: argparse.Namespace) -> str:
    store.ping()
    return f"ok: configuration valid, store {_describe(config)} reachable"


def _cleanup(config: Config, store: Store, args: argparse.Namespace) -> str:
    progress = _Progress() if sys.stderr is not None and sys.stderr.isatty() else None
    try:
        removed = purge_expired(store, progress=progress)
    finally:
        if progress is not None:
            progress.clear()
    if store.native_expiry:
        return f"0 expired sessions removed ({_describe(config)} expires them by itself)"
    return f"{removed} expired session{'s' if removed != 1 else ''} removed"


def _stats(config: Config, store: Store, args: argparse.Namespace) -> str:
    count = store.count()
    if args.json:
        return json.dumps({"live_sessions": count, "store": _describe(config)})
    if count is None:
        return f"live sessions: unknown ({_describe(config)} can't count them)"
    return f"live sessions: {count}"


def _sessions(config: Config, store: Store, args: argparse.Namespace) -> str:
    infos = list_user_sessions(store, args.user, time.time())
    if not infos:
        return f"no live sessions for user {args.user!r}"
    lines = [f"{len(infos)} live session{'s' if len(infos) != 1 else ''} of user {args.user!r}:"]
    for info in infos:
        details = [
            f"created {_when(info.created_at)}",
            f"last seen {_when(info.last_seen)}",
            f"expires {_when(info.expires_at)}",
        ]
        if info.remembered:
            details.append("remembered")
        if info.remote_addr:
            details.append(f"from {info.remote_addr}")
        if info.user_agent:
            details.append(repr(info.user_agent))
        lines.append(f"{info.handle}  {', '.join(details)}")
    return "\n".join(lines)


def _logout(config: Config, store: Store, args: argparse.Namespace) -> str:
    ended = sum(
        1
        for info in list_user_sessions(store, args.user, time.time())
        if store.delete(info.handle)
    )
    return f"{ended} session{'s' if ended != 1 else ''} of user {args.user!r} ended"


class _Progress:
    """A running count on one terminal line of stderr, for purges of many batches."""

    def __init__(self) -> None:
        self._shown = False

    def __call__(self, total: int) -> None:
        sys.stderr.write(f"\r{total} expired sessions removed so far...")
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the line, so the result or an error prints on a clean one."""
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


_Action = Callable[[Config, Store, argparse.Namespace], str]

_COMMANDS: Final[dict[str, tuple[_Action, str]]] = {
    "check": (_check, "validate the options and reach the store"),
    "cleanup": (_cleanup, "purge expired session records and print how many"),
    "stats": (_stats, "print the number of live sessions, where the store can tell"),
    "sessions": (_sessions, "list a user's live sessions"),
    "logout": (_logout, "end every session of a user and print how many"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgisession", description="Manage the sessions of a wsgisession configuration."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in _COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", required=True, metavar="FILE", help="the ini file")
        sub.add_argument("--section", default="session", help="the ini section (default: session)")
        if name == "stats":
            sub.add_argument(
                "--json",
                action="store_true",
                help='print {"live_sessions": N or null, "store": URL} as JSON',
            )
        if name in ("sessions", "logout"):
            sub.add_argument("--user", required=True, metavar="ID", help="the user id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (``sys.argv[1:]`` by default); return the exit code."""
    args = _parser().parse_args(argv)
    action, _ = _COMMANDS[args.command]
    if getattr(args, "user", None) is not None:
        try:
            check_user_id(args.user)
        except ValueError as exc:
            print(f"wsgisession: bad --user: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        config = Config.from_ini(args.config, args.section)
        store = config.open_store()
    except ConfigError as exc:
        print(f"wsgisession: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        with store:
            print(action(config, store, args))
    except StoreError as exc:
        print(f"wsgisession: store error: {exc}", file=sys.stderr)
        return EXIT_STORE
    return EXIT_OK
