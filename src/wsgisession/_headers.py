"""The headers every response of a touched session carries, beside its cookie."""

from __future__ import annotations

__all__ = ["with_session_headers"]


def with_session_headers(
    headers: list[tuple[str, str]], extra: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Return *headers* plus *extra*, ``Vary: Cookie`` and, with a cookie, Cache-Control.

    The application's headers are kept; an existing ``Vary`` is extended in place.
    """
    out = list(headers)
    vary_index = None
    has_cache_control = False
    for index, (name, _) in enumerate(out):
        # The length first: most names are neither, and len() costs less than lower().
        size = len(name)
        if size == 4 and vary_index is None and name.lower() == "vary":
            vary_index = index
        elif size == 13 and name.lower() == "cache-control":
            has_cache_control = True
    if vary_index is None:
        out.append(("Vary", "Cookie"))
    else:
        name, value = out[vary_index]
        tokens = {token.strip().lower() for token in value.split(",")}
        if "cookie" not in tokens and "*" not in tokens:
            out[vary_index] = (name, f"{value}, Cookie" if value.strip() else "Cookie")
    if extra:
        out.extend(extra)
        if not has_cache_control:
            # A shared cache must never hand one user's cookie to another.
            out.append(("Cache-Control", 'no-cache="Set-Cookie"'))
    return out
