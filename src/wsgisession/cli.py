"""The ``wsgisession`` command: check a configuration, purge and count sessions, manage users.

Every command reads the options the application reads: an ini file
(``--config FILE [--section NAME]``) or environment variables (``--env [PREFIX]``).
Exit status 0 on success, 1 when the store fails, 2 when the configuration or the
command line is bad, 3 when ``end`` finds no live session with the handle given; each
failure with one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final

from ._cli_output import Progress, iso_time, printable, session_table, table
from ._option_sources import DEFAULT_ENV_PREFIX
from .config import Config
from .errors import ConfigError, StoreError
from .purge import purge_expired
from .stores.base import Store, mask_url
from .users import SessionInfo, check_user_id, end_listed, is_handle, list_user_sessions

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_STORE: Final = 1
EXIT_CONFIG: Final = 2
EXIT_NOT_FOUND: Final = 3

#: ``logout`` redraws its progress line after every this many sessions.
LOGOUT_STEP: Final = 100


class _NotFound(Exception):
    """What the command was asked to act on does not exist (exit status 3)."""


def _describe(config: Config) -> str:
    store = config.store
    return mask_url(store) if isinstance(store, str) else type(store).__name__


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _check(config: Config, store: Store, args: argparse.Namespace) -> str:
    store.ping()
    rows = [(name, printable(value), source) for name, value, source in config.resolved()]
    if _in_process(config):
        found = f"store {_describe(config)} lives in each application process: {_IN_PROCESS}"
    else:
        found = f"store {_describe(config)} reachable"
    return table(("OPTION", "VALUE", "SOURCE"), rows) + f"\nok: configuration valid, {found}"


# What the command line can't do with a memory store, and what to use instead.
_IN_PROCESS: Final = (
    "the command line, a process of its own, can't reach its sessions; give the "
    "application a file, SQL, Redis or memcached store to manage them from here"
)


def _in_process(config: Config) -> bool:
    """Whether *config*'s store lives in each application process (``memory://``)."""
    store = config.store
    return isinstance(store, str) and store.partition(":")[0].lower() == "memory"


def _cleanup(config: Config, store: Store, args: argparse.Namespace) -> str:
    if store.native_expiry:
        store.ping()  # nothing to remove, but an unreachable store is still a failure
    progress = Progress.on_terminal(lambda n: f"{n} expired sessions removed so far...")
    try:
        removed = purge_expired(store, progress=progress)
    finally:
        if progress is not None:
            progress.clear()
    if store.native_expiry:
        return f"0 expired sessions removed ({_describe(config)} expires them by itself)"
    return f"{_plural(removed, 'expired session')} removed"


def _stats(config: Config, store: Store, args: argparse.Namespace) -> str:
    count = store.count()
    if count is None:
        store.ping()  # no count asked the store anything: down is still a failure
    if args.json:
        return json.dumps({"live_sessions": count, "store": _describe(config)})
    if count is None:
        return f"live sessions: unknown ({_describe(config)} can't count them)"
    return f"live sessions: {count}"


def _sessions(config: Config, store: Store, args: argparse.Namespace) -> str:
    now = time.time()
    infos = list_user_sessions(store, args.user, now, config.absolute_timeout)
    if args.json:
        return json.dumps({"user": args.user, "sessions": [_session_json(i) for i in infos]})
    if not infos:
        return f"no live sessions for user {args.user!r}"
    heading = f"{_plural(len(infos), 'live session')} of user {args.user!r}:"
    return heading + "\n" + session_table(infos, now)


def _session_json(info: SessionInfo) -> dict[str, object]:
    return {
        "handle": info.handle,
        "remembered": info.remembered,
        "created_at": iso_time(info.created_at),
        "last_seen": iso_time(info.last_seen),
        "expires_at": iso_time(info.expires_at),
        "remote_addr": info.remote_addr,
        "user_agent": info.user_agent,
    }


def _logout(config: Config, store: Store, args: argparse.Namespace) -> str:
    infos = list_user_sessions(store, args.user, time.time(), config.absolute_timeout)
    total = len(infos)
    progress = Progress.on_terminal(
        lambda n: f"{n} of {total} sessions of user {args.user!r} ended so far..."
    )
    ended = 0
    try:
        for done, info in enumerate(infos, 1):
            if end_listed(store, info.handle):
                ended += 1
            if progress is not None and done % LOGOUT_STEP == 0 and done < total:
                progress(done)
    finally:
        if progress is not None:
            progress.clear()
    summary = f"{_plural(ended, 'session')} of user {args.user!r} ended"
    if ended < total:
        # Expired, or ended by the application, between the listing and the delete.
        summary += f" ({total - ended} had ended meanwhile)"
    return summary


def _end(config: Config, store: Store, args: argparse.Namespace) -> str:
    if not end_listed(store, args.handle):
        raise _NotFound(f"no live session has handle {args.handle}")
    return f"session {args.handle} ended"


_Action = Callable[[Config, Store, argparse.Namespace], str]

_COMMANDS: Final[dict[str, tuple[_Action, str]]] = {
    "check": (_check, "validate the options, reach the store, and print every option"),
    "cleanup": (_cleanup, "purge expired session records and print how many"),
    "stats": (_stats, "print the number of live sessions, where the store can tell"),
    "sessions": (_sessions, "list a user's live sessions"),
    "logout": (_logout, "end every session of a user and print how many"),
    "end": (_end, "end one session, by the handle `sessions` lists"),
}

_JSON_HELP: Final = {
    "stats": 'print {"live_sessions": N or null, "store": URL} as JSON',
    "sessions": 'print {"user": ID, "sessions": [...]} as JSON, times in ISO 8601 UTC',
}

_SOURCE_USAGE: Final = "(--config FILE [--section NAME] | --env [PREFIX] [--env-ignore NAME])"


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line's parser, and its parser of each command."""
    parser = argparse.ArgumentParser(
        prog="wsgisession", description="Manage the sessions of a wsgisession configuration."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs = {}
    for name, (_, help_text) in _COMMANDS.items():
        usage = None
        if name == "end":
            usage = f"wsgisession end HANDLE {_SOURCE_USAGE}"
        sub = subs[name] = commands.add_parser(
            name, help=help_text, description=help_text, usage=usage
        )
        _add_source_arguments(sub)
        if name in _JSON_HELP:
            sub.add_argument("--json", action="store_true", help=_JSON_HELP[name])
        if name in ("sessions", "logout"):
            sub.add_argument("--user", required=True, metavar="ID", help="the user id")
        if name == "end":
            # Optional to argparse only: "end --env HANDLE" hands the handle to --env,
            # and main() gives it back (see _handle_given_to_env).
            sub.add_argument("handle", nargs="?", metavar="HANDLE", help="the session's handle")
    return parser, subs


def _add_source_arguments(sub: argparse.ArgumentParser) -> None:
    source = sub.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="read the options from this ini file")
    source.add_argument(
        "--env",
        nargs="?",
        const=DEFAULT_ENV_PREFIX,
        metavar="PREFIX",
        help=f"read the options from environment variables (default prefix: {DEFAULT_ENV_PREFIX})",
    )
    sub.add_argument(
        "--section", metavar="NAME", help="the ini section, with --config (default: session)"
    )
    sub.add_argument(
        "--env-ignore",
        action="append",
        default=[],
        metavar="NAME",
        help="a variable under the prefix that is no option, with --env; repeatable, "
        "shell-style wildcards allowed",
    )


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse combinations argparse can't express, as usage errors (exit status 2)."""
    if args.env is not None and args.section is not None:
        parser.error("--section goes with --config; --env reads no file")
    if args.config is not None and args.env_ignore:
        parser.error("--env-ignore goes with --env")
    if args.command == "end":
        _handle_given_to_env(parser, args)


def _handle_given_to_env(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    # --env takes an optional PREFIX, so in "end --env HANDLE" argparse reads the
    # handle as the prefix. No prefix has a handle's shape (64 hex digits) by design.
    if args.handle is None and args.env is not None and is_handle(args.env):
        args.handle, args.env = args.env, DEFAULT_ENV_PREFIX
    if args.handle is None:
        parser.error("the following arguments are required: HANDLE")


def _load(args: argparse.Namespace) -> Config:
    if args.env is not None:
        return Config.from_env(args.env, ignore=args.env_ignore)
    return Config.from_ini(args.config, args.section or "session")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (``sys.argv[1:]`` by default); return the exit code."""
    parser, subs = _parser()
    args = parser.parse_args(argv)
    _check_arguments(subs[args.command], args)
    action, _ = _COMMANDS[args.command]
    if getattr(args, "user", None) is not None:
        try:
            check_user_id(args.user)
        except ValueError as exc:
            print(f"wsgisession: bad --user: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if getattr(args, "handle", None) is not None and not is_handle(args.handle):
        print(
            "wsgisession: bad HANDLE: a handle is the 64 lowercase hexadecimal digits "
            "that `wsgisession sessions --user ID` lists",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        config = _load(args)
        if args.command != "check" and _in_process(config):
            raise ConfigError(
                f"store {_describe(config)!r} lives in each application process: {_IN_PROCESS}"
            )
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
    except _NotFound as exc:
        print(f"wsgisession: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    return EXIT_OK
