"""Turning a session's data into the bytes a store keeps, and back."""

from __future__ import annotations

import binascii
import datetime
import decimal
import hmac
import json
import pickle
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar, cast, runtime_checkable

from . import _plain_json as plain
from .errors import ConfigError

__all__ = [
    "JSONSerializer",
    "PickleSerializer",
    "Serializer",
    "check_serializer",
    "dumps_bytes",
    "for_sealed_records",
    "resolve_serializer",
]

_T = TypeVar("_T")


@runtime_checkable
class Serializer(Protocol):
    """What the ``serializer`` option takes: an object with ``dumps`` and ``loads``.

    ``dumps`` raises :exc:`TypeError` for a value it can't encode and may return
    ``str``, stored as UTF-8. ``loads`` raises :exc:`ValueError` for data it can't
    decode, and the session is then a miss.
    """

    def dumps(self, obj: Any) -> bytes | str: ...

    def loads(self, data: bytes) -> Any: ...


# A tagged value is {MARK: [tag, payload]}. A user's own one-key dict under MARK is
# tagged too ("dict"), so user data is never mistaken for a tag.
_MARK: Final = "\x00"
_SCALARS: Final[frozenset[type]] = frozenset({str, int, float, bool, type(None)})
_only_scalars: Final = _SCALARS.issuperset
_ENCODE: Final = json.JSONEncoder(
    ensure_ascii=False, check_circular=False, allow_nan=False, separators=(",", ":")
).encode
_ENCODE_ASCII: Final = json.JSONEncoder(
    check_circular=False, allow_nan=False, separators=(",", ":")
).encode


def _tagged(tag: str, payload: Any) -> dict[str, list[Any]]:
    return {_MARK: [tag, payload]}


# _prep_list and _prep_dict are one loop written twice, with the common values (a
# scalar, a list of scalars, a dict) handled inline: dumps() spends most of its time
# here, and every call saved per value shows.
def _prep_list(items: list[Any]) -> list[Any]:
    out = items
    for i, v in enumerate(items):
        cls = type(v)
        if cls in _SCALARS or (cls is list and _only_scalars(map(type, v))):
            continue
        e = _prep_dict(v) if cls is dict else _prep(v)
        if e is not v:
            if out is items:
                out = items.copy()
            out[i] = e
    return out


def _prep_dict(d: dict[Any, Any]) -> dict[str, Any]:
    out = d
    for k, v in d.items():
        if type(k) is not str and not isinstance(k, str):
            raise TypeError("a dict key is not a str")
        cls = type(v)
        if cls in _SCALARS or (cls is list and _only_scalars(map(type, v))):
            continue
        e = _prep_dict(v) if cls is dict else _prep(v)
        if e is not v:
            if out is d:
                out = d.copy()
            out[k] = e
    if len(out) == 1 and _MARK in out:
        return _tagged("dict", out[_MARK])
    return out


_PREPS: Final[dict[type, Callable[[Any], Any]]] = {
    dict: _prep_dict,
    list: _prep_list,
    **dict.fromkeys(_SCALARS, lambda v: v),
    tuple: lambda v: _tagged("tuple", _prep_list(list(v))),
    set: lambda v: _tagged("set", _prep_list(list(v))),
    frozenset: lambda v: _tagged("frozenset", _prep_list(list(v))),
    bytes: lambda v: _tagged("bytes", binascii.b2a_base64(v, newline=False).decode("ascii")),
    # datetime before date: for a subclass, the first isinstance() match wins.
    datetime.datetime: lambda v: _tagged("datetime", v.isoformat()),
    datetime.date: lambda v: _tagged("date", v.isoformat()),
    datetime.time: lambda v: _tagged("time", v.isoformat()),
    uuid.UUID: lambda v: _tagged("uuid", str(v)),
    decimal.Decimal: lambda v: _tagged("decimal", str(v)),
}


def _prep(value: Any) -> Any:
    """Return *value* with every tuple, set, bytes, ... in it replaced by its tag,
    copying only the containers that change. A subclass (OrderedDict, IntEnum, a
    namedtuple) is encoded as its base type, but for HTML marked safe."""
    prep = _PREPS.get(type(value))
    if prep is None:
        if hasattr(value, "__html__"):
            # markupsafe's Markup (Flask's flash(Markup(...))), Django's SafeString: a
            # str subclass that would come back as text, and be escaped once more.
            return _tagged("markup", str(value.__html__()))
        prep = next((p for base, p in _PREPS.items() if isinstance(value, base)), None)
        if prep is None:
            raise TypeError(f"{type(value).__name__!r} is not encodable")
    return prep(value)


def _find(value: Any, path: list[Any], active: set[int]) -> tuple[list[Any], str] | None:
    """Return the path to the first part of *value* JSON can't encode, and why."""
    if isinstance(value, dict | list | tuple | set | frozenset):
        if id(value) in active:
            return path, "holds a container that contains itself"
        active.add(id(value))
        for k, v in value.items() if isinstance(value, dict) else enumerate(value):
            if isinstance(value, dict) and not isinstance(k, str):
                return path, f"has a key {k!r} of type {type(k).__name__!r}; keys must be str"
            if found := _find(v, [*path, k], active):
                return found
        active.discard(id(value))
    elif isinstance(value, str | int | float):
        try:
            _ENCODE(value)
        except ValueError as exc:
            return path, f"holds a {type(value).__name__} JSON can't encode: {exc}"
    elif not isinstance(value, tuple(_PREPS)):
        return path, f"holds a value of type {type(value).__name__!r} that JSON can't encode"
    return None


def _explain(obj: Any) -> str:
    try:
        found = _find(obj, [], set())
    except RecursionError:
        return "the session nests too deeply to encode as JSON"
    if found is None:
        return "the session can't be encoded as JSON"
    path, problem = found
    if not path:
        return f"the session {problem}"
    at = "".join(f"[{p!r}]" for p in path[1:])
    return f"session key {path[0]!r}{f' at {at}' if at else ''} {problem}"


def _of(cls: type[_T], payload: Any) -> _T:
    if type(payload) is not cls:
        raise TypeError(f"payload is not a {cls.__name__}")
    return payload


# Python 3.11's fromisoformat() drops the microseconds of a UTC offset such as
# "+00:00:00.000001", so offsets with a fraction are parsed here.
_FRACTIONAL_OFFSET: Final = re.compile(r"([+-])(\d\d):(\d\d):(\d\d)\.(\d{6})$")
_Iso = TypeVar("_Iso", datetime.datetime, datetime.time)


def _from_iso(cls: type[_Iso], text: str) -> _Iso:
    match = _FRACTIONAL_OFFSET.search(text)
    if match is None:
        return cls.fromisoformat(text)
    sign, hours, minutes, seconds, micros = match.groups()
    offset = datetime.timedelta(
        hours=int(hours), minutes=int(minutes), seconds=int(seconds), microseconds=int(micros)
    )
    naive = cls.fromisoformat(text[: match.start()])
    return naive.replace(tzinfo=datetime.timezone(-offset if sign == "-" else offset))


_UNTAGS: Final[dict[str, Callable[[Any], Any]]] = {
    "tuple": lambda p: tuple(_of(list, p)),
    "set": lambda p: set(_of(list, p)),
    "frozenset": lambda p: frozenset(_of(list, p)),
    "bytes": lambda p: binascii.a2b_base64(_of(str, p), strict_mode=True),
    "datetime": lambda p: _from_iso(datetime.datetime, _of(str, p)),
    "date": lambda p: datetime.date.fromisoformat(_of(str, p)),
    "time": lambda p: _from_iso(datetime.time, _of(str, p)),
    "uuid": lambda p: uuid.UUID(_of(str, p)),
    "decimal": lambda p: decimal.Decimal(_of(str, p)),
    "dict": lambda p: {_MARK: p},
    "markup": lambda p: _markup(_of(str, p)),
}


def _markup(text: str) -> str:
    """*text* marked safe as markupsafe does it, or left plain text (which a template
    escapes) where markupsafe is not installed."""
    try:
        from markupsafe import Markup
    except ImportError:
        return text
    return Markup(text)


def _object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) != 1 or _MARK not in obj:
        return obj
    try:
        tag, payload = _of(list, obj[_MARK])
        return _UNTAGS[tag](payload)
    except (LookupError, TypeError, ValueError, ArithmeticError) as exc:
        raise ValueError(f"malformed tagged value {obj[_MARK]!r:.80}") from exc


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


_DECODE: Final = json.JSONDecoder(object_hook=_object_hook, parse_constant=_reject_constant).decode
_DECODE_UNTAGGED: Final = json.JSONDecoder(parse_constant=_reject_constant).decode
# How MARK, a control character, is always spelled in JSON text. A record without it
# holds no tagged value, so it decodes without calling _object_hook on every dict.
_MARK_ESCAPED: Final = json.dumps(_MARK)[1:-1]


# A record's first byte says how it was written: a space for a plain one (see
# _plain_json), a newline for one with tagged values. Both are JSON whitespace, so every
# record stays JSON text for any reader, while this one knows without scanning it
# whether to look for tags. Records written before this format have neither and are
# scanned for the tag marker, as they always were.
_TAGGED: Final = b"\n"


class JSONSerializer:
    """The default serializer: compact UTF-8 JSON that keeps more types.

    ``tuple``, ``set``, ``frozenset``, ``bytes``, ``datetime`` (naive, or aware
    with its UTC offset), ``date``, ``time``, ``uuid.UUID``, ``decimal.Decimal``
    and HTML marked safe (anything with ``__html__``, which comes back as
    ``markupsafe.Markup``) come back as they went in, as tagged values
    ``{"\\u0000": [tag, payload]}``. A
    dict of the user's whose one key is ``"\\u0000"`` is tagged as well, so it
    can't pass for one. Dict keys must be ``str``.

    A session of plain JSON values (the common case) is encoded and decoded by
    orjson, in C, and its record begins with a space; one holding tagged values
    begins with a newline, and is decoded with the tags. Records written before
    this distinction begin with neither and are read as before.
    """

    def dumps(self, obj: Any, reuse: Mapping[str, plain.Part] | None = None) -> bytes:
        """Encode *obj*; raise :exc:`TypeError` naming the key of a value that can't be.

        *reuse* maps keys of *obj* to the encoding of their values in a plain record
        (:func:`parts`) the caller knows they have not changed since, which is used
        as it is instead of encoding them again.
        """
        text = plain.dumps(obj, reuse)
        if text is not None:
            return text
        try:
            tagged = _ENCODE(_prep(obj))
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(_explain(obj)) from exc
        try:
            return _TAGGED + tagged.encode()
        except UnicodeEncodeError:
            # A lone surrogate has no UTF-8 form; a \u escape keeps it and stays valid.
            return _TAGGED + _ENCODE_ASCII(_prep(obj)).encode()

    def dumps_cut(
        self, obj: Any, reuse: Mapping[str, plain.Part], cut_from: int | None
    ) -> tuple[bytes, list[tuple[str, int, plain.Part]]]:
        """Encode *obj* as :meth:`dumps` does, leaving out of a plain record the values
        whose encoding is *cut_from* bytes or more (none, with ``None``).

        Returns the record without them, and each of them as its key, the offset in
        the record where its encoding belongs, and the encoding; a record with tagged
        values leaves nothing out.
        """
        cut = plain.dumps_cut(obj, reuse, cut_from)
        return (self.dumps(obj), []) if cut is None else cut

    def loads(self, data: bytes) -> Any:
        """Decode what :meth:`dumps` returned; raise :exc:`ValueError` for anything else."""
        first = data[:1]
        if first == plain.MARK:
            return plain.loads(data)
        text = str(data, "utf-8")
        try:
            if first == _TAGGED or _MARK_ESCAPED in text:
                return _DECODE(text)
            return _DECODE_UNTAGGED(text)
        except RecursionError as exc:
            raise ValueError("record nests too deeply to decode") from exc

    def parts(self, data: bytes) -> Mapping[str, plain.Part] | None:
        """The encoding of each key's value in *data*, a record :meth:`dumps` wrote, or
        ``None`` if it is not a plain one (it holds tagged values, or is older)."""
        return plain.parts(data)

    def parts_around(
        self, around: Sequence[bytes | memoryview], values: Mapping[str, plain.Part]
    ) -> Mapping[str, plain.Part] | None:
        """Like :meth:`parts`, for a record given as the encodings of some of its values
        by key and the pieces of it *around* them, which alone are scanned."""
        return plain.parts_around(around, values)

    def walk(self, data: bytes, value: Any) -> plain.Walk | None:
        """The objects *value*, decoded from the record *data*, is made of, for
        :meth:`encodes_as` to find it unchanged with; ``None`` if *data* is not a plain
        record."""
        return plain.walk(value) if plain.is_record(data) else None

    def encodes_as(self, value: Any, part: plain.Part, walked: plain.Walk | None = None) -> bool:
        """Whether *value* is exactly what *part*, from :meth:`parts`, encodes: the
        same JSON, and made only of the types that JSON gives back as they are.

        *walked* is what :meth:`walk` found in the value when it was decoded: a value
        still made of those objects needs no census of its types.
        """
        return plain.encodes_as(value, part, walked)


_TAG_SIZE: Final = 32
# What pickle raises for a value it can't pickle ("Can't pickle local object" is an
# AttributeError before Python 3.14).
_PICKLING_ERRORS: Final = (pickle.PicklingError, TypeError, AttributeError, RecursionError)


def _derive_key(secret: str | bytes) -> bytes:
    # The cookie signer uses secret_key itself; records get a key of their own.
    secret = secret.encode() if isinstance(secret, str) else secret
    return hmac.digest(secret, b"wsgisession.pickle", "sha256")


def _pickle(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except _PICKLING_ERRORS as exc:
        where = "the session"
        for key, value in obj.items() if isinstance(obj, dict) else ():
            try:
                pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            except _PICKLING_ERRORS:
                where = f"session key {key!r}"
                break
        raise TypeError(f"{where} holds a value pickle can't encode: {exc}") from exc


class _SealedPickle:
    """Pickle without a signature, for sealed records: the seal authenticates them."""

    def dumps(self, obj: Any) -> bytes:
        return _pickle(obj)

    def loads(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except Exception as exc:
            # Authenticated, so intact: the code it refers to has changed since.
            raise ValueError(f"sealed record does not unpickle: {exc!r}") from exc


class PickleSerializer:
    """Pickle, for data JSON can't carry, with every record signed.

    A record is an HMAC-SHA256 tag, keyed from *secret_key*, then the pickle.
    :meth:`loads` checks the tag against *secret_key* and then each of *fallbacks*
    before it unpickles anything, so whoever can write to the store but doesn't
    hold a key can't make the application run code.

    :param secret_key: Signs new records and verifies them.
    :param fallbacks: Older keys whose records still load.
    """

    def __init__(self, secret_key: str | bytes, fallbacks: Sequence[str | bytes] = ()) -> None:
        if not secret_key:
            raise ConfigError("option 'secret_key' must not be empty for the pickle serializer")
        self._keys = [_derive_key(secret_key), *map(_derive_key, fallbacks)]

    def dumps(self, obj: Any) -> bytes:
        """Pickle and sign *obj*; raise :exc:`TypeError` naming a key that can't be pickled."""
        data = _pickle(obj)
        return hmac.digest(self._keys[0], data, "sha256") + data

    def loads(self, data: bytes) -> Any:
        """Verify, then unpickle, a record; raise :exc:`ValueError` if it isn't ours."""
        tag, payload = data[:_TAG_SIZE], data[_TAG_SIZE:]
        if len(tag) != _TAG_SIZE or not any(
            hmac.compare_digest(tag, hmac.digest(key, payload, "sha256")) for key in self._keys
        ):
            raise ValueError("record signature does not verify")
        try:
            return pickle.loads(payload)
        except Exception as exc:
            # We signed it, so it is intact: the code it refers to has changed since.
            raise ValueError(f"signed record does not unpickle: {exc!r}") from exc


def check_serializer(spec: object) -> object:
    """Return *spec* if it can be the ``serializer`` option, else raise.

    It can be ``"json"``, ``"pickle"``, or an object (not a class) with ``dumps`` and
    ``loads``.

    :raises ConfigError: *spec* is none of those, or a class rather than an instance.
    """
    if spec in ("json", "pickle"):
        return spec
    # A class has callable dumps/loads too, but it is its instance that serializes.
    if not isinstance(spec, str | type) and all(
        callable(getattr(spec, name, None)) for name in ("dumps", "loads")
    ):
        return spec
    hint = " (a class; pass an instance)" if isinstance(spec, type) else ""
    shown = repr(spec) if isinstance(spec, str) and len(spec) <= 40 else type(spec).__name__
    raise ConfigError(
        "option 'serializer' must be 'json', 'pickle', or an object with dumps() and"
        f" loads(), got {shown}{hint}"
    )


def resolve_serializer(
    spec: str | object, secret_key: str | bytes, fallbacks: Sequence[str | bytes]
) -> Serializer:
    """Return the serializer the ``serializer`` option names: ``"json"``,
    ``"pickle"`` (signed with *secret_key*, *fallbacks* accepted), or *spec* itself.

    :raises ConfigError: *spec* can't be a serializer (:func:`check_serializer`).
    """
    spec = check_serializer(spec)
    if spec == "json":
        return JSONSerializer()
    if spec == "pickle":
        return PickleSerializer(secret_key, fallbacks)
    return cast(Serializer, spec)


def for_sealed_records(serializer: Serializer) -> Serializer:
    """The serializer of records sealed by encryption at rest: *serializer* itself,
    except that pickle leaves out its signature, which the seal's authentication
    replaces (records written unsealed stay signed)."""
    return _SealedPickle() if isinstance(serializer, PickleSerializer) else serializer


def dumps_bytes(serializer: Serializer, obj: Any) -> bytes:
    """Return ``serializer.dumps(obj)`` as bytes, encoding ``str`` output as UTF-8."""
    data = serializer.dumps(obj)
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes):
        return data
    raise TypeError(f"serializer's dumps() returned {type(data).__name__!r}, not bytes or str")
