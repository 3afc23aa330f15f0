"""A session's record as the store holds it: serialized, sealed, with its meta beside.

:class:`Codec` turns a session's data and details into a :class:`Record` and back. It
owns the choices the ``serializer``, ``encrypt`` and ``max_size`` options make about
the bytes, so that the saver, which decides what to store and when, never looks at
them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Final, NoReturn

from ._plain_json import Walk
from ._sealing import (
    MAX_HEADER,
    MAX_NAME_APART,
    Apart,
    ApartValues,
    Sealer,
    is_sealed,
    open_header,
    seal_header,
)
from ._snapshot import RecordText, Snapshot, decode_meta, encode_meta
from .errors import SessionError
from .serializers import JSONSerializer, Serializer, dumps_bytes, for_sealed_records
from .stores.base import CorruptRecord, Record

__all__ = ["Codec"]

# Below this many bytes of data, encoding a session afresh costs less than taking the
# stored record apart to reuse its unchanged keys.
_REUSE_FROM: Final = 1024
# A value whose encoding is this big is sealed apart from the rest of the record, so
# that saves which leave it unchanged copy its seal instead of encrypting it again:
# encrypting 16 KB costs several times the extra decryption call on each read.
_APART_FROM: Final = 16 * 1024


class Codec:
    """Encodes and decodes the records of one middleware.

    :param serializer: Turns a session's data into bytes and back.
    :param encrypt: The ``encrypt`` option: ``True``, ``"migrate"`` or ``False``.
    :param max_size: The largest record stored, in bytes, everything counted.
    :param sealer: Seals and opens records, under the middleware's secret keys.
    """

    __slots__ = (
        "_json",
        "_max_size",
        "_plain_readable",
        "_seal",
        "_sealed_serializer",
        "_sealer",
        "_serializer",
    )

    def __init__(
        self, serializer: Serializer, encrypt: bool | str, max_size: int, sealer: Sealer
    ) -> None:
        self._sealer = sealer
        self._serializer = serializer
        self._sealed_serializer = for_sealed_records(serializer)
        self._seal = encrypt is not False
        self._plain_readable = encrypt is not True
        self._max_size = max_size
        # The JSON serializer's plain records can be compared and reused key by key.
        self._json = serializer if isinstance(serializer, JSONSerializer) else None

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
        base: Snapshot | None = None,
        rewritten: AbstractSet[str] = frozenset(),
    ) -> Record:
        """Return the record of session *session_id* to store under *key*.

        *details* are the remember-me flag, the bound address, the per-key deadlines,
        and the user agent and address ``track_clients`` keeps. With ``encrypt`` on,
        the data and the bound address are sealed under a key only *session_id* yields,
        bound to *key*, the version, the user and the meta; what a listing needs
        without a cookie stays readable in the meta.

        *base* is the record *data* was merged onto: every key of *data* but the
        *rewritten* ones holds what it holds there, and where the serializer can, its
        stored encoding is reused.

        :raises SessionError: The record is over ``max_size``: the data, the per-key
            deadlines and client details in the meta, and the user id all count, so no
            mix of keys and key timeouts grows a record past the limit.
        """
        remember, ip, deadlines, agent, address = details
        reuse = self._reusable(base, data, rewritten)
        if self._seal:
            # Key names are data: the meta keeps only the deadlines' times, in the order
            # of the names sealed beside the data, with the bound address.
            if deadlines or ip is not None:
                names = sorted(deadlines)
                times = [deadlines[name] for name in names]
                meta = encode_meta(remember, None, times, agent, address)
                header = seal_header(ip, names)
                if len(header) > MAX_HEADER:
                    raise SessionError(
                        f"the names of the {len(names)} keys with a timeout take "
                        f"{len(header)} bytes sealed, over {MAX_HEADER}; the session was "
                        "not saved: use fewer or shorter keys with a timeout"
                    )
            else:
                meta, header = encode_meta(remember, None, (), agent, address), b""
            payload, cuts = self._dumps(self._sealed_serializer, data, reuse, _APART_FROM)
            if cuts and any(len(name.encode()) > MAX_NAME_APART for name, _, _ in cuts):
                # A key too long to name in the seal's index: nothing is sealed apart.
                payload, cuts = self._dumps(self._sealed_serializer, data, reuse)
            apart = self._apart(session_id, key, base, reuse, cuts) if cuts else ()
            blob = self._sealer.seal(
                session_id, key, version, user_id, meta, header, payload, apart
            )
        else:
            meta = encode_meta(remember, ip, deadlines, agent, address)
            blob, _ = self._dumps(self._serializer, data, reuse)
        record = Record(blob, version, created_at, expires_at, last_seen, user_id, meta)
        size = self._size(record)
        if size > self._max_size:
            self._too_big(size)
        return record

    @staticmethod
    def _size(record: Record) -> int:
        """What counts against ``max_size``: the data, the meta and the user id."""
        user_id = record.user_id
        return (
            len(record.data) + len(record.meta) + (0 if user_id is None else len(user_id.encode()))
        )

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
        apart = None
        stale = False
        if is_sealed(blob):
            try:
                (header, blob, apart), stale = self._sealer.open(
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
        if self._json is None:
            text = None
        elif apart is None:
            text = RecordText(blob, self._json.parts)
        else:
            # Under a fallback key, the values' seals are not copied: sealed again.
            seals = None if stale else apart.seals
            text = RecordText(blob, _split_around(self._json, apart), seals)
        reseal = stale and self._size(record) <= self._max_size
        return Snapshot(session_id, key, record, data, deadlines, remember, ip, text, reseal)

    def walk(self, snapshot: Snapshot, value: Any) -> Walk | None:
        """The objects *value*, as decoded from *snapshot*, is made of, for
        :meth:`changed_in_place` to find it unchanged quickly; ``None`` when that
        can't be done for this record (another serializer, tagged values)."""
        text = snapshot.text
        if text is None or self._json is None:
            return None
        return self._json.walk(text.text, value)

    def changed_in_place(
        self,
        snapshot: Snapshot,
        keys: Iterable[str],
        data: Mapping[str, Any],
        walks: Mapping[str, Walk | None],
    ) -> set[str] | None:
        """The *keys* whose value in *data* is no longer what *snapshot* stores, found
        from the stored encoding of each; ``None`` when that can't be done here (another
        serializer, a record with tagged values), and the values must be compared with
        a fresh decode instead. *walks* are what :meth:`walk` found in some of the
        values as decoded.

        Exact: a tuple in place of a list, or ``True`` in place of ``1``, is a change.
        """
        parts = None if snapshot.text is None else snapshot.text.parts()
        if parts is None or self._json is None:
            return None
        same = self._json.encodes_as
        return {
            k
            for k in keys
            if k in data and (k not in parts or not same(data[k], parts[k], walks.get(k)))
        }

    @staticmethod
    def same_write(stored: Record, written: Record) -> bool:
        """Whether *stored* is *written* itself, which only its writer could have stored.

        A sealed record holds a random nonce, so a copy of its bytes is that very
        write; an unsealed one may equal another request's identical write.
        """
        return (
            stored.version == written.version
            and stored.data == written.data
            and is_sealed(written.data)
        )

    def stored_differently(
        self, keys: Iterable[str], data: Mapping[str, Any], loaded: Mapping[str, Any]
    ) -> set[str]:
        """The *keys* whose value in *data* would not be stored as their *loaded* value
        is: :meth:`changed_in_place` for records it can't take apart, with *loaded* a
        fresh decode of the record.

        Exact where ``==`` is not (``True`` for ``1``, ``-0.0`` for ``0.0``, a tuple for
        an equal list, a dict's keys reordered), as it compares what the serializer
        makes of each value. A value it can't encode is a change: the save says why.
        """
        found = set()
        for k in keys:
            if k not in data:
                continue
            if k not in loaded or not self._encode_alike(k, data[k], loaded[k]):
                found.add(k)
        return found

    def _encode_alike(self, key: str, value: Any, loaded: Any) -> bool:
        serializer = self._serializer
        try:
            return dumps_bytes(serializer, {key: value}) == dumps_bytes(serializer, {key: loaded})
        except Exception:
            return False

    def _dumps(
        self,
        serializer: Serializer,
        data: dict[str, Any],
        reuse: Mapping[str, Any],
        cut_from: int | None = None,
    ) -> tuple[bytes, list[tuple[str, int, Any]]]:
        """*data* encoded, reusing the stored encodings in *reuse*, with the values of
        *cut_from* bytes or more left out and returned apart (only when reusing: a
        record encoded afresh leaves nothing out)."""
        if reuse and self._json is not None:
            return self._json.dumps_cut(data, reuse, cut_from)
        return dumps_bytes(serializer, data), []

    def _apart(
        self,
        session_id: str,
        key: str,
        base: Snapshot | None,
        reuse: Mapping[str, Any],
        cuts: Iterable[tuple[str, int, Any]],
    ) -> list[Apart]:
        """The values *cuts* left out of the record, sealed apart: a value unchanged
        since *base* keeps the seal *base* has for it, if it is the same session's
        under the same key (``regenerate()`` seals everything afresh)."""
        sealed: Mapping[str, bytes | memoryview] = {}
        if base is not None and base.text is not None:
            if base.session_id == session_id and base.key == key:
                sealed = base.text.apart
        found = []
        for name, at, part in cuts:
            kept = sealed.get(name) if name in reuse else None
            if kept is None:
                kept = self._sealer.seal_apart(session_id, key, part)
            found.append(Apart(name, at, kept))
        return found

    def _reusable(
        self, base: Snapshot | None, data: Mapping[str, Any], rewritten: AbstractSet[str]
    ) -> Mapping[str, Any]:
        """The stored encodings, in *base*, of the keys of *data* not *rewritten*, when
        the record is big enough for reusing them to pay."""
        text = None if base is None else base.text
        if text is None or len(text.text) < _REUSE_FROM:
            return {}
        parts = text.parts()
        if parts is None:
            return {}
        return {k: part for k, part in parts.items() if k in data and k not in rewritten}


def _split_around(
    json: JSONSerializer, apart: ApartValues
) -> Callable[[bytes], Mapping[str, Any] | None]:
    """Take a record with values sealed apart to pieces from the text around them,
    which spares scanning the big values; the whole text if that fails."""

    def split(text: bytes) -> Mapping[str, Any] | None:
        found = json.parts_around(apart.around, apart.texts)
        return json.parts(text) if found is None else found

    return split
