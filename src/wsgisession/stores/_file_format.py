"""The byte layout of a file store record, and its two refresh slots.

Private to :mod:`wsgisession.stores.file`. Kept apart from the store, which decides
*when* a file is written, locked or removed, so that what a file *says* can be read,
checked and versioned in one place: a worker that meets a file of another format
version must judge it by these rules alone.

A record file holds the magic and the format version; two slots for the times a
refresh moves (``expires_at``, ``last_seen``, and a CRC-32 of the two); then the record
proper: flags, version, ``created_at``, ``expires_at``, ``last_seen``, the lengths of
``user_id``, ``meta`` and ``data``, a CRC-32 of all but the slots, and the body. A save
writes the slots empty (zeros never pass their CRC); a refresh overwrites one slot in
place and the other is untouched, so the record's CRC never covers what a refresh
changes.

A tombstone (see :class:`~wsgisession.stores.base.Record`) is an ordinary record of
version 0; the version is in the header, so a scan tells one apart without reading
the body, and files of this format need no new version for it.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final, NamedTuple

from .base import CorruptRecord, Record

__all__ = [
    "HEAD_SIZE",
    "SLOT",
    "SLOT_AT",
    "UNREADABLE",
    "Header",
    "decode_record",
    "encode_record",
    "header",
    "slot",
    "slots",
    "spare_slot",
]

_PREFIX: Final = struct.Struct(">4sB3x")
_TIMES: Final = struct.Struct(">dd")
#: A refresh slot: ``expires_at``, ``last_seen`` and the CRC-32 of the two.
SLOT: Final = struct.Struct(">ddI4x")
_HEAD: Final = struct.Struct(">BQdddIII")
_CRC: Final = struct.Struct(">I")
#: The offsets of the two refresh slots in a record file.
SLOT_AT: Final = (_PREFIX.size, _PREFIX.size + SLOT.size)
_HEAD_AT: Final = SLOT_AT[1] + SLOT.size
_BODY_AT: Final = _HEAD_AT + _HEAD.size + _CRC.size
#: How much of a record file :func:`header` reads: all but the body.
HEAD_SIZE: Final = _BODY_AT
_EMPTY_SLOTS: Final = bytes(2 * SLOT.size)
_MAGIC: Final = b"WSGS"
_FORMAT: Final = 2
_PREFIX_BYTES: Final = _PREFIX.pack(_MAGIC, _FORMAT)
_PREFIX_CRC: Final = zlib.crc32(_PREFIX_BYTES)
_HAS_USER: Final = 1


def encode_record(record: Record) -> bytes:
    """Return the record file of *record*, with both refresh slots empty."""
    user = b"" if record.user_id is None else record.user_id.encode("utf-8")
    body = user + record.meta + record.data
    flags = 0 if record.user_id is None else _HAS_USER
    times = (record.created_at, record.expires_at, record.last_seen)
    lengths = (len(user), len(record.meta), len(record.data))
    head = _HEAD.pack(flags, record.version, *times, *lengths)
    crc = zlib.crc32(body, zlib.crc32(head, zlib.crc32(_PREFIX_BYTES)))
    return _PREFIX_BYTES + _EMPTY_SLOTS + head + _CRC.pack(crc) + body


def slot(expires_at: float, last_seen: float) -> bytes:
    """Return a refresh slot holding *expires_at* and *last_seen*."""
    times = _TIMES.pack(expires_at, last_seen)
    return SLOT.pack(expires_at, last_seen, zlib.crc32(times))


def slots(blob: bytes) -> list[tuple[float, float] | None]:
    """Return the times in each slot of *blob*; ``None`` for an empty or torn one."""
    found: list[tuple[float, float] | None] = []
    for at in SLOT_AT:
        expires, seen, crc = SLOT.unpack_from(blob, at)
        ok = zlib.crc32(blob[at : at + _TIMES.size]) == crc
        found.append((expires, seen) if ok else None)
    return found


def _times(blob: bytes, expires_at: float, last_seen: float) -> tuple[float, float]:
    """Return the later of the header's times and those of any whole slot."""
    for times in slots(blob):
        if times is not None:
            expires_at, last_seen = max(expires_at, times[0]), max(last_seen, times[1])
    return expires_at, last_seen


def spare_slot(blob: bytes) -> int:
    """Return the offset of the slot a refresh of *blob* overwrites.

    That is an empty or torn slot, or else the one with the earlier times, so the
    slot holding the latest times stays whole while the other is written: a reader
    that meets the write half done falls back on it.
    """
    first, second = slots(blob)
    if first is None or (second is not None and first <= second):
        return SLOT_AT[0]
    return SLOT_AT[1]


def _check_prefix(blob: bytes) -> None:
    if len(blob) >= _PREFIX.size:
        magic, fmt = _PREFIX.unpack_from(blob)
        if magic != _MAGIC:
            raise CorruptRecord("not a session record")
        if fmt != _FORMAT:
            raise CorruptRecord(f"unknown format version {fmt}")
    if len(blob) < _BODY_AT:
        raise CorruptRecord(f"truncated to {len(blob)} bytes")


def decode_record(blob: bytes) -> Record:
    """Return the record in the record file *blob*, with the latest times of its slots.

    :raises CorruptRecord: *blob* is not a whole record file of this format.
    """
    # Every load comes here: the common case (this format's prefix, slots never
    # written by a refresh) skips what can only matter otherwise.
    start = blob[: _PREFIX.size]
    if start == _PREFIX_BYTES and len(blob) >= _BODY_AT:
        crc = _PREFIX_CRC
    else:
        _check_prefix(blob)
        crc = zlib.crc32(start)
    flags, version, created, expires, seen, n_user, n_meta, n_data = _HEAD.unpack_from(
        blob, _HEAD_AT
    )
    whole = memoryview(blob)
    body = whole[_BODY_AT:]
    if len(body) != n_user + n_meta + n_data:
        raise CorruptRecord(f"{len(body)} bytes of body, expected {n_user + n_meta + n_data}")
    crc = zlib.crc32(body, zlib.crc32(whole[_HEAD_AT : _BODY_AT - _CRC.size], crc))
    if crc != _CRC.unpack_from(blob, _BODY_AT - _CRC.size)[0]:
        raise CorruptRecord("checksum mismatch")
    try:
        user_id = str(body[:n_user], "utf-8") if flags & _HAS_USER else None
    except UnicodeDecodeError as exc:
        raise CorruptRecord("user id is not UTF-8") from exc
    meta, data = bytes(body[n_user : n_user + n_meta]), bytes(body[n_user + n_meta :])
    if blob[SLOT_AT[0] : _HEAD_AT] != _EMPTY_SLOTS:
        expires, seen = _times(blob, expires, seen)
    return Record(data, version, created, expires, seen, user_id, meta)


class Header(NamedTuple):
    """What a scan reads of a record file: its latest expiry, and whether it is a tombstone."""

    expires_at: float
    tombstone: bool


#: What :func:`header` makes of a file that is no record: expired long ago.
UNREADABLE: Final = Header(float("-inf"), False)


def header(head: bytes) -> Header:
    """Return the latest ``expires_at`` of a record file that starts with *head*, and its kind.

    *head* is the file's first :data:`HEAD_SIZE` bytes, or all of a shorter file. The
    expiry is the later of the header's and the slots'; the body is not read, nor
    checked. A corrupt file reads as expired long ago, so cleanup removes it. A file of
    a newer format reads as a record never expiring: a newer worker sharing the
    directory may have written it, and only that worker can judge it.
    """
    if len(head) < _PREFIX.size or head[:4] != _MAGIC or head[4] < _FORMAT:
        return UNREADABLE
    if head[4] > _FORMAT:
        return Header(float("inf"), False)
    if len(head) < _BODY_AT:
        return UNREADABLE
    _, version, _, expires, *_ = _HEAD.unpack_from(head, _HEAD_AT)
    return Header(_times(head, expires, 0.0)[0], version == 0)
