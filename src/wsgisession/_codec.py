"""A session's record as the store holds it: serialized, sealed, with its meta beside.

:class:`Codec` turns a session's data and details into a :class:`Record` and back. It
owns the choices the ``serializer``, ``encrypt`` and ``max_size`` options make about
the bytes, so that the saver, which decides what to store and when, never looks at
them.
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

from ._sealing import MAGIC, open_header, open_sealed, seal, seal_header
from ._snapshot import Snapshot, decode_meta, encode_meta
from .errors import SessionError
from .serializers import Serializer, dumps_bytes, for_sealed_records
from .stores.base import CorruptRecord, Record

__all__ = ["Codec"]

# Read on every load: the length of a sealed record's prefix, as a constant.
_SEALED: Final = len(MAGIC)


class Codec:
    """Encodes and decodes the records of one middleware.

    :param serializer: Turns a session's data into bytes and back.
    :param encrypt: The ``encrypt`` option: ``True``, ``"migrate"`` or ``False``.
    :param max_size: The largest record stored, in bytes, everything counted.
    """

    __slots__ = ("_max_size", "_plain_readable", "_seal", "_sealed_serializer", "_serializer")

    def __init__(self, serializer: Serializer, encrypt: bool | str, max_size: int) -> None:
        self._serializer = serializer
        self._sealed_serializer = for_sealed_records(serializer)
        self._seal = encrypt is not False
        self._plain_readable = encrypt is not True
        self._max_size = max_size

    def encode(
        self,
        session_id: str,
        key: str,
        data: dict[str, Any],
        details: tuple[bool, str | None, dict[str, float], str | None, str | None],
        user_id: str | None,
        *,
        version: int,
        created_at: float,
        expires_at: float,
        last_seen: float,
    ) -> Record:
        """Return the record of session *session_id* to store under *key*.

        *details* are the remember-me flag, the bound address, the per-key deadlines,
        and the user agent and address ``track_clients`` keeps. With ``encrypt`` on,
        the data and the bound address are sealed under a key only *session_id* yields,
        bound to *key*, the version, the user and the meta; what a listing needs
        without a cookie stays readable in the meta.

        :raises SessionError: The record is over ``max_size``: the data, the per-key
            deadlines and client details in the meta, and the user id all count, so no
            mix of keys and key timeouts grows a record past the limit.
        """
        remember, ip, deadlines, agent, address = details
        if self._seal:
            # Key names are data: the meta keeps only the deadlines' times, in the order
            # of the names sealed beside the data, with the bound address.
            names = sorted(deadlines)
            times = [deadlines[name] for name in names]
            meta = encode_meta(remember, None, times, agent, address)
            payload = dumps_bytes(self._sealed_serializer, data)
            header = seal_header(ip, names)
            blob = seal(session_id, key, version, user_id, meta, header, payload)
        else:
            meta = encode_meta(remember, ip, deadlines, agent, address)
            blob = dumps_bytes(self._serializer, data)
        size = len(blob) + len(meta) + (0 if user_id is None else len(user_id.encode()))
        if size > self._max_size:
            self._too_big(size)
        return Record(blob, version, created_at, expires_at, last_seen, user_id, meta)

    def _too_big(self, size: int) -> NoReturn:
        raise SessionError(
            f"the session is {size} bytes stored (data, key timeouts and metadata), over "
            f"max_size {self._max_size}; it was not saved"
        )

    def decode(self, session_id: str, key: str, record: Record) -> Snapshot:
        """Open and decode *record*, the session *session_id* stored under *key*.

        A sealed record opens only with its own session id, key, version, user and
        meta. An unsealed one is read only when ``encrypt`` is ``"migrate"`` or
        ``False``: with ``True``, a record planted in the store without the seal is
        refused.

        :raises Exception: The record is corrupt: :exc:`CorruptRecord` in our own words,
            or whatever the serializer raises on bytes it can't read.
        """
        timed, remember, ip = decode_meta(record.meta)
        blob = record.data
        if blob[:_SEALED] == MAGIC:
            try:
                header, blob = open_sealed(
                    session_id, key, record.version, record.user_id, record.meta, blob
                )
            except ValueError as exc:
                raise CorruptRecord(str(exc)) from None
            ip, deadlines = open_header(header, timed) if header or timed else (None, {})
            data = self._sealed_serializer.loads(blob)
        elif not self._plain_readable:
            raise CorruptRecord("record is not encrypted, and option 'encrypt' is True")
        elif isinstance(timed, dict):
            deadlines = timed
            data = self._serializer.loads(blob)
        else:
            raise CorruptRecord("key timeouts without key names")
        if not isinstance(data, dict):
            raise ValueError(f"data is a {type(data).__name__}, not a dict")
        return Snapshot(session_id, key, record, data, deadlines, remember, ip)
