"""The Redis store's session string, its keys' names, and its scripts' arguments.

Each session is one Redis string: a fixed header, then the user id, the meta and the
data. The header is, big-endian: the 4 bytes ``wsr1``, the version (8-byte signed
integer), then ``created_at``, ``expires_at`` and ``last_seen`` (8-byte doubles),
the user id's length in bytes (4-byte signed integer, ``-1`` when the session has no
user) and the meta's length (4-byte unsigned integer). A load is one ``GET`` whose
reply is a single string, which redis-py parses far more cheaply than a hash's
fields. The scripts (:mod:`~wsgisession.stores._redis_lua`) read only the header
and the user id, with one ``GETRANGE`` for a user id of up to 64 bytes, so checking
a stored record costs the same whatever its size, and a refresh rewrites the two
times in place with ``SETRANGE``. A record of :data:`STAGE_AT` bytes or more is not
a script argument, which Redis would copy into Lua: it goes ahead of the script, in
the same pipeline, to a key of its own that the script renames onto the session. A
value that is not a string in this layout (a hash from before, or anything else) is
treated as absent by the scripts, and :func:`decode` refuses it; the messages of its
errors say what is wrong with a value, never what the value holds.

Expiry is judged by the application's clock, so every script takes the caller's
:func:`wsgisession._clock.now` as ``now`` and treats a record whose ``expires_at``
is not after it as absent, whatever TTL Redis still gives it. Redis's own TTL is set
relative to that same ``now`` (:func:`ttl_ms`), so Redis drops a record when the
application's clock reaches ``expires_at``, even if the two clocks disagree. Every
TTL given to Redis is at most :data:`MAX_TTL_MS`: a record meant to live longer is
dropped by Redis then, and till then ``expires_at`` decides.

A record of version 0 is a tombstone (see :class:`~wsgisession.stores.base.Record`).
The names of the user sets, the save locks and the staged records are
:class:`Keys`'; what lives under them is told in :mod:`~wsgisession.stores._redis_lua`.
"""

from __future__ import annotations

import math
import struct
from typing import Final, NamedTuple

from .base import Record

__all__ = [
    "EXPIRES_AT",
    "HEADER",
    "MAGIC",
    "MAX_TTL_MS",
    "STAGE_AT",
    "STAGE_TTL_MS",
    "USER_READ",
    "Keys",
    "Peek",
    "decode",
    "encode",
    "head",
    "peek",
    "save_answer",
    "tombstone_args",
    "ttl_ms",
    "user_of",
    "version_arg",
]

#: The first 4 bytes of every record.
MAGIC: Final = b"wsr1"

#: magic, version, created_at, expires_at, last_seen, user id length, meta length.
HEADER: Final = struct.Struct(">4sqdddiI")

#: Where expires_at starts; last_seen follows it, so a refresh writes both at once.
EXPIRES_AT: Final = 20

#: How many bytes of user id the scripts read with the header, in one GETRANGE.
USER_READ: Final = 64


_VERSION: Final = struct.Struct(">q")

#: The longest TTL, in milliseconds, given to Redis: a hundred years, ten times the
#: longest duration the middleware accepts. Redis refuses a TTL that overflows its
#: clock, and a Lua number becomes a command argument in exponent notation from 1e17
#: on, which Redis refuses as "not an integer".
MAX_TTL_MS: Final = 100 * 365 * 86_400 * 1000


#: From this many bytes on, a record is not sent to ``SAVE`` as an argument: Redis
#: copies every script argument into Lua at about 1.2 µs per KB (on Redis 7.0 here:
#: 145 µs of the server's time for a 100 KB save, against 21 µs staged), while a
#: plain ``SET`` takes a long value as it is. Such a record is *staged*: written with
#: ``SET`` to a key of its own, in one pipeline with the script, which renames it onto
#: the session once the compare passes. The pipeline costs the client about 25 µs
#: more, so below some 24 KB staging saves nothing overall; this threshold leaves a
#: margin, and still moves work off the one server thread that all clients share.
STAGE_AT: Final = 32 * 1024

#: How long a staged record lives if its script never runs (the connection failed
#: between the two): it is renamed or deleted within the same round trip otherwise.
STAGE_TTL_MS: Final = 60_000


def version_arg(version: int | None) -> bytes:
    """Return *version* as the scripts compare it: its 8 header bytes (empty for none).

    Lua's numbers are doubles, exact only up to 2**53; the bytes are exact for any
    version, so a compare-and-set never mistakes one version for its neighbour.
    """
    return b"" if version is None else _VERSION.pack(version)


def ttl_ms(expires_at: float, now: float) -> int:
    """Return the TTL in milliseconds that makes Redis drop a record at *expires_at*.

    Relative to the application's *now*, so Redis drops the record when the
    application's clock reaches *expires_at* even if the server's clock is off. Zero
    means the record is already expired, and the scripts delete the key. At most
    :data:`MAX_TTL_MS`, however far *expires_at* is.
    """
    left = (expires_at - now) * 1000
    if not left > 0:  # NaN too: a record that is never live
        return 0
    # Compared before rounding, as math.ceil() of an infinity raises.
    return MAX_TTL_MS if left >= MAX_TTL_MS else math.ceil(left)


def tombstone_args(tombstone: Record | None, now: float) -> list[str | bytes | int]:
    """Return a tombstone as the scripts take it: its TTL, then its encoding.

    ``[0, b""]`` for none: the replaced key is deleted instead.
    """
    if tombstone is None:
        return [0, b""]
    return [ttl_ms(tombstone.expires_at, now), encode(tombstone)]


def encode(record: Record) -> bytes:
    """Return *record* in the layout the scripts read."""
    user = b"" if record.user_id is None else record.user_id.encode()
    head = HEADER.pack(
        MAGIC,
        record.version,
        record.created_at,
        record.expires_at,
        record.last_seen,
        -1 if record.user_id is None else len(user),
        len(record.meta),
    )
    return b"".join((head, user, record.meta, record.data))


def head(value: bytes) -> bytes:
    """Return the header and user id of the encoded record *value*.

    What ``SAVE`` reads of a staged record to keep the user index: its expiry and
    its user.
    """
    user_len = _unpack(value)[4]
    return value[: HEADER.size + max(user_len, 0)]


def decode(value: bytes) -> Record:
    """Return the record *value* holds, expired or not.

    :raises ValueError: *value* is not a record in this layout. The message says
        what is wrong, never what *value* holds.
    """
    version, created_at, expires_at, last_seen, user_len, meta_len = _unpack(value)
    if user_len < -1:
        raise ValueError("the header gives the user id a negative length")
    start = HEADER.size + max(user_len, 0)
    end = start + meta_len
    if end > len(value):
        raise ValueError("the record is cut short")
    try:
        user_id = None if user_len < 0 else value[HEADER.size : start].decode()
    except UnicodeDecodeError:
        # Its message quotes the bytes it could not decode.
        raise ValueError("the user id is not UTF-8") from None
    return Record(
        data=value[end:],
        version=version,
        created_at=created_at,
        expires_at=expires_at,
        last_seen=last_seen,
        user_id=user_id,
        meta=value[start:end],
    )


class Peek(NamedTuple):
    """The two header fields a compare-and-set looks at."""

    version: int
    expires_at: float


def peek(head: bytes, size: int | None = None) -> Peek | None:
    """Return the version and expiry in the first :data:`HEADER` bytes of a record.

    ``None`` if *head* is not the start of a record in this layout, or, given the
    record's *size* in bytes, if the lengths in the header don't fit in it, as
    :func:`decode` would find.
    """
    try:
        version, _, expires_at, _, user_len, meta_len = _unpack(head)
    except ValueError:
        return None
    if size is not None and (user_len < -1 or HEADER.size + max(user_len, 0) + meta_len > size):
        return None
    return Peek(version, expires_at)


def _unpack(value: bytes) -> tuple[int, float, float, float, int, int]:
    try:
        magic, *fields = HEADER.unpack_from(value)
    except struct.error:
        raise ValueError("too short for a record header") from None
    if magic != MAGIC:
        raise ValueError("not in this store's record format")
    version, created_at, expires_at, last_seen, user_len, meta_len = fields
    return version, created_at, expires_at, last_seen, user_len, meta_len


class Keys:
    """The names of a store's keys under *prefix*, as the scripts build them too.

    A session is ``<prefix><key>``, and its key is 64 hex digits, so that no
    session's name starts with ``u:`` or ``l:`` after the prefix: those start the
    names of the user sets and of the save locks, their lines and batons.
    """

    __slots__ = ("index", "locks", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: Where the user sets' names start: the scripts' index prefix.
        self.index = prefix + "u:"
        #: Where the save locks' names start.
        self.locks = prefix + "l:"

    def lock(self, key: str) -> str:
        """Name the save lock of the session under *key*.

        The session's name is the lock's hash tag, which puts the lock in the
        session's Redis Cluster slot.
        """
        return f"{self.locks}{{{self.prefix}{key}}}"

    def stage(self, key: str, token: str) -> str:
        """Name the key a record for the session under *key* is staged in.

        Beside the session's save lock, so in the session's Redis Cluster slot, under
        a name no lock, line or baton takes (:data:`STAGE_AT`).
        """
        return f"{self.lock(key)}:w:{token}"

    def user(self, user_id: str | bytes) -> str:
        """Name the set of *user_id*'s sessions.

        From the hex of its UTF-8, as ``user_key`` does in the scripts: any user id
        makes a distinct name.
        """
        raw = user_id.encode() if isinstance(user_id, str) else user_id
        return self.index + raw.hex()


def user_of(answer: object) -> bytes | None:
    """Return a user id a script answered, as stored, or ``None`` for nil."""
    return answer if isinstance(answer, bytes) else None


def save_answer(answer: object) -> tuple[bool, bytes | None]:
    """Return whether ``SAVE`` wrote, and the user id the record it overwrote had."""
    return answer != 0, user_of(answer)
