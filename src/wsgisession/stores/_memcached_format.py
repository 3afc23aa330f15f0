"""The bytes a memcached store keeps: a session's value and a user's index value.

Private to :mod:`wsgisession.stores.memcached`. Memcached stores opaque values, so the
store frames its own, and what a value *says* is read here alone.

A session value is a fixed header, then the user id, the meta and the data. The
header is, big-endian: the 4 bytes ``wsm1``, the version (8-byte signed integer), then
``created_at``, ``expires_at``, ``last_seen`` and ``indexed_until`` (8-byte doubles),
the user id's length in bytes (4-byte signed integer, ``-1`` when the session has no
user) and the meta's length (4-byte unsigned integer). ``indexed_until`` is no part of
the :class:`~wsgisession.stores.base.Record`: it is how long the user's index was
known to list this session when it was written (see
:mod:`~wsgisession.stores._memcached_index`), so that a save that moves the expiry no
further than that leaves the index alone.

A user's index value is the 4 bytes ``wsu1``, ``until`` (8-byte double: when the
index item expires), the user id's length and the number of entries (4-byte unsigned
integers), the user id, then per entry the key's length (2-byte unsigned integer),
the key, and the entry's recorded expiry and the time it was linked (8-byte doubles).

The errors of the decoders say what is wrong with a value, never what it holds.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from .base import Record

__all__ = [
    "Entry",
    "Index",
    "Stored",
    "decode_index",
    "decode_record",
    "encode_index",
    "encode_record",
]

_MAGIC: Final = b"wsm1"
#: magic, version, created_at, expires_at, last_seen, indexed_until, user length, meta length.
_HEADER: Final = struct.Struct(">4sqddddiI")

_INDEX_MAGIC: Final = b"wsu1"
#: magic, until, user length, number of entries.
_INDEX_HEADER: Final = struct.Struct(">4sdII")
_KEY_LENGTH: Final = struct.Struct(">H")
_ENTRY_TIMES: Final = struct.Struct(">dd")


class Stored(NamedTuple):
    """A session value as read: its record, and how long its user's index lists it."""

    record: Record
    indexed_until: float


class Entry(NamedTuple):
    """One session in a user's index."""

    #: The session's expiry when the index last looked at it.
    expires_at: float
    #: When the entry was added; a session is written just after it is linked.
    linked_at: float


class Index(NamedTuple):
    """A user's index: whose it is, until when it lives, and its entries by key."""

    user_id: str
    until: float
    entries: dict[str, Entry]


def encode_record(record: Record, indexed_until: float = 0.0) -> bytes:
    """Return *record* as a session value, with the index's *indexed_until*."""
    user = b"" if record.user_id is None else record.user_id.encode()
    head = _HEADER.pack(
        _MAGIC,
        record.version,
        record.created_at,
        record.expires_at,
        record.last_seen,
        indexed_until,
        -1 if record.user_id is None else len(user),
        len(record.meta),
    )
    return b"".join((head, user, record.meta, record.data))


def decode_record(value: bytes) -> Stored:
    """Return the record a session value holds, expired or not.

    :raises ValueError: *value* is not a session value in this layout.
    """
    try:
        magic, version, created, expires, seen, indexed, user_len, meta_len = _HEADER.unpack_from(
            value
        )
    except struct.error:
        raise ValueError("too short for a record header") from None
    if magic != _MAGIC:
        raise ValueError("not in this store's record format")
    if user_len < -1:
        raise ValueError("the header gives the user id a negative length")
    start = _HEADER.size + max(user_len, 0)
    end = start + meta_len
    if end > len(value):
        raise ValueError("the record is cut short")
    try:
        user_id = None if user_len < 0 else value[_HEADER.size : start].decode()
    except UnicodeDecodeError:
        # Its message quotes the bytes it could not decode.
        raise ValueError("the user id is not UTF-8") from None
    record = Record(
        data=value[end:],
        version=version,
        created_at=created,
        expires_at=expires,
        last_seen=seen,
        user_id=user_id,
        meta=value[start:end],
    )
    return Stored(record, indexed)


def encode_index(index: Index) -> bytes:
    """Return *index* as an index value."""
    user = index.user_id.encode()
    parts = [_INDEX_HEADER.pack(_INDEX_MAGIC, index.until, len(user), len(index.entries)), user]
    for key, entry in index.entries.items():
        raw = key.encode()
        parts += [_KEY_LENGTH.pack(len(raw)), raw, _ENTRY_TIMES.pack(*entry)]
    return b"".join(parts)


def decode_index(value: bytes) -> Index:
    """Return the index an index value holds.

    :raises ValueError: *value* is not an index value in this layout.
    """
    try:
        magic, until, user_len, count = _INDEX_HEADER.unpack_from(value)
    except struct.error:
        raise ValueError("too short for a user index header") from None
    if magic != _INDEX_MAGIC:
        raise ValueError("not in this store's user index format")
    at = _INDEX_HEADER.size + user_len
    try:
        user_id = value[_INDEX_HEADER.size : at].decode()
        entries: dict[str, Entry] = {}
        for _ in range(count):
            (length,) = _KEY_LENGTH.unpack_from(value, at)
            at += _KEY_LENGTH.size
            key = value[at : at + length].decode("ascii")
            at += length
            entries[key] = Entry(*_ENTRY_TIMES.unpack_from(value, at))
            at += _ENTRY_TIMES.size
    except (struct.error, UnicodeDecodeError):
        raise ValueError("the user index is cut short or garbled") from None
    if at != len(value) or len(user_id.encode()) != user_len:
        raise ValueError("the user index does not end where its header says")
    return Index(user_id, until, entries)
