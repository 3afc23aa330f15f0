"""The headers every response of a touched session carries, beside its cookie."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["with_session_headers"]


def with_session_headers(
    headers: list[tuple[str, str]], extra: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Return *headers* plus *extra*, ``Vary: Cookie`` and, with a cookie, Cache-Control.

    The application's headers are kept; an existing ``Vary`` is extended in place.
    """
    out = list(headers)
    vary_index = None
    cache_index = None
    for index, (name, _) in enumerate(out):
        # The length first: most names are neither, and len() costs less than lower().
        size = len(name)
        if size == 4 and vary_index is None and name.lower() == "vary":
            vary_index = index
        elif size == 13 and cache_index is None and name.lower() == "cache-control":
            cache_index = index
    if vary_index is None:
        out.append(("Vary", "Cookie"))
    else:
        name, value = out[vary_index]
        tokens = {token.strip().lower() for token in value.split(",")}
        if "cookie" not in tokens and "*" not in tokens:
            out[vary_index] = (name, f"{value}, Cookie" if value.strip() else "Cookie")
    if extra:
        out.extend(extra)
        # A shared cache must never hand one user's cookie to another, the application's
        # "public, max-age=600" notwithstanding.
        if cache_index is None:
            out.append(("Cache-Control", _NO_CACHED_COOKIE))
        else:
            name, value = out[cache_index]
            if not value.strip():
                out[cache_index] = (name, _NO_CACHED_COOKIE)
            elif not _keeps_out_shared_caches(value):
                out[cache_index] = (name, f"{value}, {_NO_CACHED_COOKIE}")
    return out


_NO_CACHED_COOKIE: Final = 'no-cache="Set-Cookie"'


def _keeps_out_shared_caches(value: str) -> bool:
    """Whether a ``Cache-Control`` *value* keeps shared caches from reusing the
    response's ``Set-Cookie``: ``private`` or ``no-cache``, alone or naming it, or
    ``no-store``. (Naming other fields, they let a shared cache keep the rest.)"""
    for match in _DIRECTIVE.finditer(value):
        token, argument = match.group(1).lower(), match.group(2)
        if token == "no-store":
            return True
        if token in ("private", "no-cache"):
            if argument is None:
                return True
            fields = {field.strip().lower() for field in argument.strip('"').split(",")}
            if "set-cookie" in fields:
                return True
    return False


# A directive and its argument, a token or a quoted string (RFC 9110 section 5.6).
_DIRECTIVE: Final = re.compile(
    r'([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?'
)
