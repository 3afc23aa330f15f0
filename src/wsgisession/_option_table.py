"""The one table of options: each option's name, default, kind and README line.

:mod:`wsgisession.config` checks values against it, the readers of ini files and the
environment look names up in it, and the README's table and the documentation's
reference are generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = ["BY_NAME", "OPTIONS", "Option", "options_markdown"]


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its name, default, kind and the line the README shows for it."""

    name: str
    default: Any
    kind: str
    doc: str


OPTIONS: Final[tuple[Option, ...]] = (
    Option("secret_key", None, "secret", "signs cookies"),
    Option(
        "secret_key_fallbacks",
        (),
        "secrets",
        "older keys still accepted when verifying (key rotation)",
    ),
    Option("store", "file:./sessions", "store", "a store URL or a store object"),
    Option(
        "store_options",
        {},
        "mapping",
        "extra keyword arguments for the store; in ini, keys `store.NAME`",
    ),
    Option("timeout", 3600, "seconds", "idle lifetime, seconds"),
    Option(
        "remember_me_timeout",
        2592000,
        "seconds",
        "lifetime of remembered sessions, seconds (30 days)",
    ),
    Option("absolute_timeout", None, "seconds?", "hard cap from creation, seconds"),
    Option(
        "anonymous_timeout",
        None,
        "seconds?",
        "idle lifetime of sessions without a `user_id`, at most `timeout`; linking a user "
        "switches to `timeout`. `None`: `timeout` for all",
    ),
    Option(
        "save_every_request",
        False,
        "bool",
        "save (and so extend) on every request that touched the session",
    ),
    Option(
        "cookie_name",
        "session_id",
        "cookie_name",
        "a `__Host-` name forces Secure, `Path=/` and no `Domain`",
    ),
    Option("cookie_domain", None, "domain", "the cookie's `Domain` attribute"),
    Option("cookie_path", "/", "path", "the cookie's `Path` attribute"),
    Option("cookie_secure", None, "bool?", "`None`: Secure when the request came over https"),
    Option("cookie_httponly", True, "bool", "the `HttpOnly` attribute"),
    Option(
        "cookie_samesite",
        "Lax",
        "samesite",
        '`"Strict"`, `"Lax"`, `"None"` or `None` (no attribute)',
    ),
    Option("cookie_partitioned", False, "bool", "adds `Partitioned` (CHIPS); needs Secure"),
    Option(
        "cookie_max_age",
        None,
        "seconds?",
        "`None`: a browser-lifetime cookie for sessions that are not remembered",
    ),
    Option(
        "serializer",
        "json",
        "serializer",
        '`"json"`, `"pickle"` (signed records), or an object with `dumps` and `loads`',
    ),
    Option("environ_key", "session", "str", "where the session is put in the environ"),
    Option(
        "initializer",
        None,
        "initializer",
        "a mapping, or a callable returning one, every new session starts with",
    ),
    Option(
        "bind_ip",
        False,
        "bool",
        "a session presented from another `REMOTE_ADDR` is treated as expired",
    ),
    Option(
        "encrypt",
        True,
        "encrypt",
        "seal session data in the store under a key only the cookie and the secret key yield; "
        '`"migrate"` also reads records written unsealed; `False` writes them unsealed',
    ),
    Option("max_size", 1048576, "size", "largest serialized session saved, in bytes"),
    Option(
        "regenerate_grace",
        60,
        "interval",
        "seconds after `regenerate()` during which the old id gets no cookie-deleting "
        "`Set-Cookie`; `0` disables",
    ),
    Option(
        "on_save_error",
        None,
        "handler",
        "a callable `(environ, error)` returning the WSGI app that answers when the save "
        "after the app returned fails with `StoreError`; `None` re-raises",
    ),
    Option(
        "save_timeout",
        30,
        "seconds",
        "seconds a save may wait for concurrent saves of the same session",
    ),
    Option(
        "cleanup_interval",
        3600,
        "interval",
        "seconds between background purges of expired records; `0` disables",
    ),
    Option(
        "max_sessions_per_user",
        None,
        "count?",
        "linking a session to a user who has this many ends their oldest",
    ),
    Option(
        "track_clients",
        False,
        "bool",
        "record `User-Agent` and `REMOTE_ADDR` for `user_sessions()`",
    ),
    Option(
        "listeners",
        (),
        "listeners",
        "callables receiving an event per `created`, `saved`, `expired`, …",
    ),
)

#: Each option by its name.
BY_NAME: Final = {option.name: option for option in OPTIONS}


def options_markdown() -> str:
    """Return the README's option table, generated from :data:`OPTIONS`."""
    lines = ["| name | default | meaning |", "|---|---|---|"]
    for option in OPTIONS:
        default = "required" if option.name == "secret_key" else _markdown_value(option.default)
        lines.append(f"| `{option.name}` | {default} | {option.doc} |")
    return "\n".join(lines) + "\n"


def _markdown_value(value: object) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    return "`[]`" if value == () else f"`{value!r}`"
