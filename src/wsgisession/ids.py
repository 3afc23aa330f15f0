"""Session ids and the keys a store sees instead of them."""

from __future__ import annotations

import functools
import hashlib
import secrets
from typing import Final

#: 32 bytes from the OS's CSPRNG, well above OWASP's 64-bit floor.
ID_BYTES: Final = 32

#: The shape of an id, as a regular expression: token_urlsafe(32) is 43 characters of
#: the URL-safe base64 alphabet, with no padding.
ID_PATTERN: Final = r"[A-Za-z0-9_-]{43}"


def new_session_id() -> str:
    """Return a fresh session id: 256 random bits from :mod:`secrets`, URL-safe."""
    return secrets.token_urlsafe(ID_BYTES)


# A user's requests come one after another, each hashing the id its cookie carries:
# the keys of the latest ids are kept, as _sealing keeps their ciphers, in this
# process only.
@functools.lru_cache(maxsize=1024)
def store_key(session_id: str) -> str:
    """Return the key a store files the session under: the id's SHA-256, in hex.

    The store never sees the id itself, so a dump of the store cannot be replayed
    as cookies.
    """
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()
