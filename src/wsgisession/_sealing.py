"""Encryption at rest: a record's data sealed under a key only its cookie and the secret key yield.

The store sees a session's id only as its SHA-256 (the store key); the raw id travels
only in the signed cookie. Each record's data is sealed with AES-256-GCM under a key
derived from that raw id and from ``secret_key``: the store alone, or the store and
``secret_key`` together, read nothing, and the store and a cookie together (a visitor
who can write to the store knows the raw id of their own session) can't seal a record
the middleware would open. The authenticated data binds the ciphertext to the store
key, the record's version, its user id and its meta blob (NUL-separated: neither
store keys, user ids nor meta hold NUL, so no two records' bindings read the same): a
record copied under another key, older data under a newer version, changed metadata
or a flipped bit fail to open and read as corrupt.

A sealed blob is :data:`MAGIC`, a 12-byte random nonce, then the ciphertext and its
16-byte tag. Inside, before the serializer's bytes, is a header the caller defines (two
bytes of length, then the header), for what must be sealed but is not data.

Big values can be sealed apart (:meth:`Sealer.seal_apart`), so that a save which leaves
them unchanged copies their sealed bytes instead of encrypting them again. Such a record is
:data:`APART_MAGIC`, the nonce, four bytes of the main seal's length, the main seal,
then each value's own seal (its nonce, ciphertext and tag). The main seal holds the
header, then for each value its key, where its text goes in the data, and its seal's
length, nonce and tag, then the rest of the data. The values' seals bind the store
key; the main seal binds each of them by its nonce and tag (a GCM tag under the
session's key is unforgeable), so a value's seal can't be swapped for an older one of
the same session, and binds what a plain seal binds, and its layout.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._snapshot import compact_json, read_json

__all__ = [
    "APART_MAGIC",
    "MAGIC",
    "MAX_HEADER",
    "MAX_NAME_APART",
    "Apart",
    "ApartValues",
    "Opened",
    "Sealer",
    "binding_of",
    "derive_key",
    "is_sealed",
    "open_header",
    "seal_header",
]

#: How a sealed blob starts: never the first bytes of JSON or of a signed pickle.
MAGIC: Final = b"\x00wss1"
#: How a sealed blob with values sealed apart starts.
APART_MAGIC: Final = b"\x00wss2"
_NONCE: Final = 12
_TAG: Final = 16
_START: Final = len(MAGIC)
_BODY: Final = _START + _NONCE
_NO_HEADER: Final = b"\x00\x00"
_SIZE: Final = struct.Struct(">H")
#: The longest header :func:`seal` takes, in bytes: its length is two bytes.
MAX_HEADER: Final = 0xFFFF
#: The longest key, UTF-8 encoded, whose value can be sealed apart, for the same reason.
MAX_NAME_APART: Final = 0xFFFF
_MAIN: Final = struct.Struct(">I")
# Where a value sealed apart goes in the data, and its seal's length.
_PLACE: Final = struct.Struct(">II")
# The KDF's label, versioned so a new scheme can't open an old record by mistake.
_LABEL: Final = b"wsgisession record key v2"
# What a secret key is turned into before it takes part in record keys.
_BINDING_LABEL: Final = b"wsgisession record key binding v1"
# What a value sealed apart authenticates besides itself, before the store key.
_APART_LABEL: Final = b"wsgisession value apart v1\x00"
# What the main seal of a record with values apart binds after the record's place,
# so that neither layout's seal can be read as the other's.
_APART_LAYOUT: Final = b"\x00values apart"
# HMAC's padded key XOR ipad and XOR opad (RFC 2104), byte by byte, as translate tables.
_IPAD: Final = bytes(byte ^ 0x36 for byte in range(256))
_OPAD: Final = bytes(byte ^ 0x5C for byte in range(256))
_BLOCK: Final = 64
#: Nonces drawn from the OS in one call: 256 of them, 3 KB.
_NONCES_PER_DRAW: Final = 256


class _Nonces:
    """Random 96-bit nonces, drawn from :func:`os.urandom` a few kilobytes at a time.

    One ``os.urandom(12)`` call costs a system call, several times what the sealing
    around it costs; drawing 256 nonces' worth at once and handing them out one by
    one costs a fraction of that per nonce. The nonces are exactly as random, and
    each is handed out once: ``list.pop`` is atomic, so threads popping one list get
    different nonces, and a list replaced by a new draw (two threads that found it
    empty both draw) is only ever popped, never refilled, so its nonces can't come
    back.

    GCM under one key must never see a nonce twice, and a forked child starts with a
    copy of its parent's memory, unused nonces included: handed out in both
    processes, they would repeat under the same session's key. So the pool belongs to
    the process that drew it, and any other draws its own. The process id is
    compared on every nonce (a system call, 0.2 µs), not left to an
    :func:`os.register_at_fork` hook: a fork made by C code that does not call
    ``PyOS_AfterFork_Child()`` runs no hook (uWSGI's, unless told to), and a master
    that sealed before forking would hand its workers the same nonces.
    """

    __slots__ = ("_pid", "_pool")

    def __init__(self) -> None:
        self._pool: list[bytes] = []
        self._pid = os.getpid()

    def take(self) -> bytes:
        """Return a fresh 12-byte nonce, never handed out before in any process."""
        # The process id first, then the pool, the reverse of _draw's order: a thread
        # that finds the new id finds the pool drawn for it.
        if self._pid != os.getpid():
            return self._draw()  # a child's first: its parent's pool is not its own
        try:
            return self._pool.pop()
        except IndexError:
            return self._draw()

    def _draw(self) -> bytes:
        drawn = os.urandom(_NONCE * _NONCES_PER_DRAW)
        fresh = [drawn[at : at + _NONCE] for at in range(0, len(drawn), _NONCE)]
        nonce = fresh.pop()
        self._pool = fresh
        self._pid = os.getpid()
        return nonce


_nonces: Final = _Nonces()


def binding_of(secret: str | bytes) -> bytes:
    """What *secret* (``secret_key``, or one of its fallbacks) keys record keys with:
    ``hmac.digest(secret, label, "sha256")``, so the secret itself is never used twice."""
    return hmac.digest(
        secret.encode() if isinstance(secret, str) else secret, _BINDING_LABEL, "sha256"
    )


def derive_key(session_id: str, binding: bytes) -> bytes:
    """The AES-256 key of the session *session_id*'s records, under *binding*.

    HMAC-SHA256 used as the KDF (one block of NIST SP 800-108's counter mode), keyed
    by *binding* (from :func:`binding_of`), over a fixed, versioned label and the raw
    id: ``hmac.digest(binding, label + b"\\0" + id, "sha256")``. Both are needed: the
    id, which only the session's cookie holds, and the secret key, which only the
    application holds.
    """
    return _Keys(binding).derive(session_id)


class _Keys:
    """Derives record keys under one binding, and keeps the ciphers of recent sessions.

    A user's requests come one after another, and a write opens then seals: deriving
    the key and setting up its cipher cost more than the sealing itself, so the
    ciphers of the latest sessions are kept. They live in this process only, as the
    ids do while their requests run. The HMAC's two SHA-256 states after its padded
    key (RFC 2104) are computed once and copied for each key: ``hmac.digest`` would
    set up an OpenSSL HMAC context each time, which costs more.
    """

    __slots__ = ("_inner", "_outer", "cipher")

    def __init__(self, binding: bytes) -> None:
        key = binding.ljust(_BLOCK, b"\0")  # 32 bytes: never longer than a block
        self._inner = hashlib.sha256(key.translate(_IPAD) + _LABEL + b"\0")
        self._outer = hashlib.sha256(key.translate(_OPAD))
        #: The cipher of a session's records, by its raw id.
        self.cipher: Callable[[str], AESGCM] = functools.lru_cache(maxsize=1024)(self._cipher)

    def derive(self, session_id: str) -> bytes:
        """The key of *session_id*'s records."""
        inner = self._inner.copy()
        inner.update(session_id.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def _cipher(self, session_id: str) -> AESGCM:
        return AESGCM(self.derive(session_id))


def _bound(key: str, version: int, user_id: str | None, meta: bytes) -> bytes:
    # Domain separation is the key derivation's label; this binds the record's place.
    # No user and the user "" would bind alike: a user id is never empty (users.py), so
    # a record claiming "" was changed by hand, and fails to open.
    if user_id == "":
        raise ValueError("a record's user id is never empty")
    # Formatted as text and encoded once: half the time of formatting bytes.
    user = "" if user_id is None else user_id
    return f"{key}\x00{version}\x00{user}\x00".encode() + meta


def is_sealed(blob: bytes) -> bool:
    """Whether *blob* is a sealed record's data (it may still fail to open)."""
    start = blob[:_START]
    return start == MAGIC or start == APART_MAGIC


class Apart(NamedTuple):
    """A value of the data sealed apart, and where its text goes in the rest."""

    #: The session key the value is stored under.
    name: str
    #: Its offset in the data without the values sealed apart.
    at: int
    #: Its seal, from :meth:`Sealer.seal_apart`: nonce, ciphertext and tag.
    sealed: bytes | memoryview


class ApartValues(NamedTuple):
    """The values a record sealed apart, as :meth:`Sealer.open` found them."""

    #: Each value's seal, by key, for a save that leaves the value unchanged to copy.
    seals: Mapping[str, bytes | memoryview]
    #: Each value's text, by key.
    texts: Mapping[str, bytes]
    #: The rest of the data, in the pieces between the values: what a reader can take
    #: apart without scanning the values themselves.
    around: list[bytes | memoryview]


#: What :meth:`Sealer.open` finds in a sealed blob: the header; the serializer's bytes,
#: any values sealed apart back in their places; and those values, or ``None``. (A
#: plain tuple: a named one costs a Python call to build, on every read.)
Opened: TypeAlias = tuple[bytes, bytes, ApartValues | None]


class _NotAuthentic(ValueError):
    """A blob that fails to authenticate under one key: another may open it."""


class Sealer:
    """Seals and opens the records of one middleware.

    :param secret_key: The key every record is sealed under (with its session id).
    :param fallbacks: Earlier secret keys: records sealed under them still open.
    """

    __slots__ = ("_current", "_keys")

    def __init__(self, secret_key: str | bytes, fallbacks: Sequence[str | bytes] = ()) -> None:
        self._keys = tuple(_Keys(binding_of(secret)) for secret in (secret_key, *fallbacks))
        # The current key's cipher cache, looked up on every seal.
        self._current = self._keys[0].cipher

    def seal(
        self,
        session_id: str,
        key: str,
        version: int,
        user_id: str | None,
        meta: bytes,
        header: bytes,
        payload: bytes,
        apart: Sequence[Apart] = (),
    ) -> bytes:
        """Seal *header* and *payload* (the serializer's bytes) for the record under *key*.

        *apart* are values sealed apart under the same session and store key, with
        their offsets in *payload*, in order: the record binds each of their seals.
        """
        if len(header) > MAX_HEADER:
            raise ValueError("header too long to seal")
        nonce = _nonces.take()
        cipher = self._current(session_id)
        bound = _bound(key, version, user_id, meta)
        if not apart:
            head = _SIZE.pack(len(header)) + header if header else _NO_HEADER
            return MAGIC + nonce + cipher.encrypt(nonce, head + payload, bound)
        index: list[bytes | memoryview] = [
            _SIZE.pack(len(header)),
            header,
            _SIZE.pack(len(apart)),
        ]
        for value in apart:
            name = value.name.encode()
            sealed = value.sealed
            index += (
                _SIZE.pack(len(name)),
                name,
                _PLACE.pack(value.at, len(sealed)),
                sealed[:_NONCE],
                sealed[-_TAG:],
            )
        main = cipher.encrypt(nonce, b"".join(index) + payload, bound + _APART_LAYOUT)
        seals = [value.sealed for value in apart]
        return b"".join([APART_MAGIC, nonce, _MAIN.pack(len(main)), main, *seals])

    def seal_apart(self, session_id: str, key: str, text: bytes | memoryview) -> bytes:
        """Seal the text of one value, to go in the record under *key* with :meth:`seal`."""
        nonce = _nonces.take()
        return nonce + self._current(session_id).encrypt(nonce, text, _APART_LABEL + key.encode())

    def open(
        self,
        session_id: str,
        key: str,
        version: int,
        user_id: str | None,
        meta: bytes,
        blob: bytes,
    ) -> tuple[Opened, bool]:
        """Return what *blob*, sealed for the record under *key*, holds, and whether
        only a fallback key opened it (a save should seal it again).

        The caller has found *blob* sealed (:func:`is_sealed`); a blob that is not
        fails to authenticate all the same.

        :raises ValueError: *blob* fails to open: another session's, an older
            version's, sealed under no key of this middleware, tampered with,
            truncated, or not sealed at all.
        """
        bound = _bound(key, version, user_id, meta)
        # The current key on its own: every open but those after a rotation ends here.
        try:
            return _open(self._current(session_id), key, bound, blob), False
        except _NotAuthentic:
            pass
        for keys in self._keys[1:]:
            try:
                return _open(keys.cipher(session_id), key, bound, blob), True
            except _NotAuthentic:
                continue
        raise ValueError("encrypted record does not authenticate")


def _open(cipher: AESGCM, key: str, bound: bytes, blob: bytes) -> Opened:
    if blob[:_START] == APART_MAGIC:
        return _open_apart(cipher, key, bound + _APART_LAYOUT, memoryview(blob))
    try:
        plain = cipher.decrypt(blob[_START:_BODY], blob[_BODY:], bound)
    except InvalidTag:
        raise _NotAuthentic from None
    if plain[:2] == _NO_HEADER:
        return b"", plain[2:], None
    size = int.from_bytes(plain[:2], "big")
    return plain[2 : 2 + size], plain[2 + size :], None


def _open_apart(cipher: AESGCM, key: str, bound: bytes, blob: memoryview) -> Opened:
    try:
        (size,) = _MAIN.unpack_from(blob, _BODY)
        start = _BODY + _MAIN.size
        try:
            opened = cipher.decrypt(blob[_START:_BODY], blob[start : start + size], bound)
        except InvalidTag:
            raise _NotAuthentic from None
        plain = memoryview(opened)
        at = start + size  # where the values' seals start
        (header_size,) = _SIZE.unpack_from(plain)
        header = bytes(plain[2 : 2 + header_size])
        (count,) = _SIZE.unpack_from(plain, 2 + header_size)
        read = 4 + header_size
        places: list[tuple[str, int, memoryview]] = []
        for _ in range(count):
            (name_size,) = _SIZE.unpack_from(plain, read)
            name = str(plain[read + 2 : read + 2 + name_size], "utf-8")
            read += 2 + name_size
            offset, length = _PLACE.unpack_from(plain, read)
            read += _PLACE.size
            sealed = blob[at : at + length]
            at += length
            if len(sealed) != length or length < _NONCE + _TAG:
                raise ValueError("a value sealed apart is missing")
            if (
                sealed[:_NONCE] != plain[read : read + _NONCE]
                or sealed[-_TAG:] != plain[read + _NONCE : read + _NONCE + _TAG]
            ):
                raise ValueError("a value sealed apart is not the record's")
            read += _NONCE + _TAG
            places.append((name, offset, sealed))
    except (struct.error, UnicodeDecodeError):
        raise ValueError("malformed encrypted record") from None
    if at != len(blob):
        raise ValueError("malformed encrypted record")
    rest = plain[read:]
    around: list[bytes | memoryview] = []
    texts: dict[str, bytes] = {}
    pieces: list[bytes | memoryview] = []
    done = 0
    label = _APART_LABEL + key.encode()
    for name, offset, sealed in places:
        if not done <= offset <= len(rest):
            raise ValueError("malformed encrypted record")
        try:
            text = cipher.decrypt(sealed[:_NONCE], sealed[_NONCE:], label)
        except InvalidTag:
            # The record's own seal opened: this value is corrupt, not another key's.
            raise ValueError("a value sealed apart does not authenticate") from None
        around.append(rest[done:offset])
        pieces += (around[-1], text)
        texts[name] = text
        done = offset
    around.append(rest[done:])
    pieces.append(around[-1])
    seals = {name: sealed for name, _, sealed in places}
    return header, b"".join(pieces), ApartValues(seals, texts, around)


def seal_header(ip: str | None, names: Sequence[str]) -> bytes:
    """The header the middleware seals: the bound address and the names of keys with
    a timeout, whose times stay in the readable meta (empty when there is neither)."""
    if ip is None and not names:
        return b""
    header: dict[str, Any] = {}
    if ip is not None:
        header["ip"] = ip
    if names:
        header["t"] = list(names)
    return compact_json(header)


def open_header(
    header: bytes, times: dict[str, float] | list[float]
) -> tuple[str | None, dict[str, float]]:
    """Return the bound address and the key deadlines of a sealed record.

    *times* are the deadlines in the record's meta, in the order of the sealed names.

    :raises ValueError: The header is malformed or does not match the times.
    """
    if not header and not times:
        return None, {}
    fields = read_json(header) if header else {}
    if not isinstance(fields, dict):
        raise ValueError("malformed sealed header")
    ip, names = fields.get("ip"), fields.get("t", [])
    if not isinstance(names, list) or not isinstance(times, list) and times:
        raise ValueError("malformed key timeouts")
    if len(names) != len(times) or not all(isinstance(n, str) for n in names):
        raise ValueError("key timeouts do not match their names")
    return (ip if isinstance(ip, str) else None), dict(zip(names, times, strict=True))
