"""The JSON and pickle serializers, and how the ``serializer`` option is resolved."""

from __future__ import annotations

import collections
import datetime
import enum
import hmac
import json
import math
import pickle
import sys
import threading
import types
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.wrappers import Request

from tests.helpers import PickleTrap, body, make_client
from wsgisession import Session
from wsgisession.errors import ConfigError
from wsgisession.serializers import (
    JSONSerializer,
    PickleSerializer,
    Serializer,
    dumps_bytes,
    resolve_serializer,
)

MARK = "\x00"
TAGS = ["tuple", "set", "frozenset", "bytes", "datetime", "date", "time", "uuid", "decimal"]
UTC_PLUS_5_30 = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
UTC_MINUS_ODD = datetime.timezone(-datetime.timedelta(hours=3, seconds=7, microseconds=9))


def same(a: Any, b: Any) -> bool:
    """``a == b``, and every part of each has the same type (and offset, and sign)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, datetime.datetime | datetime.time):
        naive = a.replace(tzinfo=None, fold=0) == b.replace(tzinfo=None, fold=0)
        return naive and a.utcoffset() == b.utcoffset()
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def round_trip(value: Any) -> Any:
    s = JSONSerializer()
    return s.loads(s.dumps(value))


# --- JSON: what round-trips ---------------------------------------------------------

ROUND_TRIPS = [
    pytest.param({"a": 1, "b": -2.5, "c": True, "d": None, "e": "é☃"}, id="scalars"),
    pytest.param({"n": 10**40, "z": -0.0, "f": 1e308, "tiny": 5e-324}, id="big-and-odd-numbers"),
    pytest.param({"t": (1, "a", None)}, id="tuple"),
    pytest.param({"t": ()}, id="empty-tuple"),
    pytest.param({"t": (1, (2, (3,)), [4, (5,)])}, id="nested-tuples"),
    pytest.param({"l": [(1, 2), {"x": (3,)}]}, id="tuples-in-list-and-dict"),
    pytest.param({"b": b"\x00\xff binary", "e": b""}, id="bytes"),
    pytest.param({"d": datetime.datetime(2024, 2, 29, 23, 59, 58, 123456)}, id="naive-datetime"),
    pytest.param(
        {"d": datetime.datetime(2024, 1, 1, 12, 0, 0, 1, tzinfo=datetime.UTC)}, id="utc-datetime"
    ),
    pytest.param(
        {"d": datetime.datetime(2024, 1, 1, 12, 30, tzinfo=UTC_PLUS_5_30)}, id="offset-datetime"
    ),
    pytest.param(
        {"d": datetime.datetime(1, 1, 1, 0, 0, 1, 7, tzinfo=UTC_MINUS_ODD)},
        id="second-and-microsecond-offset",
    ),
    pytest.param({"d": datetime.date(1999, 12, 31)}, id="date"),
    pytest.param(
        {"t": datetime.time(8, 15, 0, 999), "u": datetime.time(1, 2, tzinfo=UTC_PLUS_5_30)},
        id="time",
    ),
    pytest.param({"u": uuid.UUID("12345678-1234-5678-1234-567812345678")}, id="uuid"),
    pytest.param(
        {"m": [Decimal("0.1"), Decimal("1.10"), Decimal("-0"), Decimal("1E+3")]}, id="decimal"
    ),
    pytest.param({"m": [Decimal("NaN"), Decimal("-Infinity")]}, id="decimal-specials"),
    pytest.param({"s": {1, "a", (2, 3)}, "f": frozenset({b"x", frozenset()})}, id="sets"),
    pytest.param({"s": set(), "f": frozenset()}, id="empty-sets"),
    pytest.param({MARK: 1}, id="session-key-is-the-marker"),
    pytest.param({"x": {MARK: ["tuple", [1, 2]]}}, id="user-dict-shaped-like-a-tag"),
    pytest.param({"x": {MARK: {MARK: {MARK: "deep"}}}}, id="marker-dicts-nested"),
    pytest.param({"x": {MARK: ["dict", 1]}}, id="user-dict-shaped-like-an-escape"),
    pytest.param({"x": {MARK: 1, "y": 2}}, id="marker-key-among-others"),
    pytest.param({"x": {"\\u0000": 1}}, id="escaped-looking-key"),
    pytest.param({"lone": "\ud800 surrogate"}, id="lone-surrogate"),
    pytest.param({}, id="empty-session"),
]


@pytest.mark.parametrize("value", ROUND_TRIPS)
def test_json_round_trips_types_included(value: dict[str, Any]) -> None:
    assert same(round_trip(value), value)


def test_json_plain_session_is_compact_utf8_after_a_space() -> None:
    data = {"a": [1, "é"], "b": {"c": None}}
    out = JSONSerializer().dumps(data)
    assert out == b" " + '{"a":[1,"é"],"b":{"c":null}}'.encode()
    assert json.loads(out) == data


def test_json_plain_values_deep_and_shared_take_the_plain_encoding() -> None:
    shared = {"x": [1.5, None, True, "s"]}
    deep: Any = shared
    for _ in range(100):
        deep = [deep, shared]
    out = JSONSerializer().dumps({"d": deep, "z": -0.0, "f": 1e308})
    assert out[:1] == b" "
    assert same(JSONSerializer().loads(out), {"d": deep, "z": -0.0, "f": 1e308})


def test_json_plain_record_never_reads_a_user_dict_as_a_tag() -> None:
    value = {"x": {MARK: ["tuple", [1, 2]]}, MARK: ["bytes", "QQ=="]}
    out = JSONSerializer().dumps(value)
    assert out[:1] == b" "
    assert same(JSONSerializer().loads(out), value)


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(b'{"a":[1,"\xc3\xa9"],"b":{"c":null}}', id="plain"),
        pytest.param(b'{"t":{"\\u0000":["tuple",[1,2]]}}', id="tagged"),
    ],
)
def test_json_reads_records_written_before_the_leading_byte(record: bytes) -> None:
    # Written by 0.1, which began every record with "{" and tagged in place.
    expected = {"t": (1, 2)} if b"tuple" in record else {"a": [1, "é"], "b": {"c": None}}
    assert same(JSONSerializer().loads(record), expected)


def test_json_lone_surrogate_is_escaped_so_output_stays_utf8() -> None:
    out = JSONSerializer().dumps({"s": "\udcff"})
    assert out.decode("utf-8") == '\n{"s":"\\udcff"}'


def test_json_dumps_leaves_its_input_alone() -> None:
    inner = [(1, 2), {MARK: 3}]
    data = {"k": inner}
    JSONSerializer().dumps(data)
    assert data == {"k": [(1, 2), {MARK: 3}]} and data["k"] is inner


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class Point(NamedTuple):
    x: int
    y: int


def test_json_subclasses_come_back_as_their_base_type() -> None:
    data = {
        "o": collections.OrderedDict(a=1),
        "c": Color.RED,
        "p": Point(1, 2),
    }
    assert same(round_trip(data), {"o": {"a": 1}, "c": 1, "p": (1, 2)})


def test_json_keeps_html_marked_safe() -> None:
    from markupsafe import Markup

    data = {"m": Markup("<b>saved</b>"), "flashes": [["message", Markup("<i>a</i> &amp;")]]}
    back = round_trip(data)
    assert same(back, data)
    assert type(back["m"]) is Markup and type(back["flashes"][0][1]) is Markup
    # Anything else with __html__ (Django's SafeString) is written as its HTML.

    class Safe(str):
        def __html__(self) -> str:
            return "<u>" + self + "</u>"

    assert round_trip({"s": Safe("x")}) == {"s": Markup("<u>x</u>")}


def test_json_reads_html_marked_safe_as_text_without_markupsafe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from markupsafe import Markup

    record = JSONSerializer().dumps({"m": Markup("<b>x</b>")})
    monkeypatch.setitem(sys.modules, "markupsafe", None)  # its import fails
    back = JSONSerializer().loads(record)
    assert back == {"m": "<b>x</b>"} and type(back["m"]) is str  # a template escapes it


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"t": (1, 2)}, id="tuple"),
        pytest.param({"u": uuid.UUID(int=7)}, id="uuid"),
        pytest.param({"big": 10**40}, id="int-beyond-64-bits"),
        pytest.param({"c": Color.RED}, id="int-enum"),
        pytest.param({"d": datetime.date(2024, 1, 1)}, id="date"),
        pytest.param({"s": collections.OrderedDict(a=1)}, id="dict-subclass"),
        # A session of one level of strings and integers is checked apart from the
        # others: its keys too.
        pytest.param({"user": "u-1", Name("n"): 1}, id="flat-str-subclass-key"),
        pytest.param({"user": "u-1", "n": Color.RED}, id="flat-int-enum"),
    ],
)
def test_json_session_with_tagged_values_begins_with_a_newline(value: dict[str, Any]) -> None:
    # Each would lose its type written as plain JSON, as orjson writes it.
    out = JSONSerializer().dumps(value)
    assert out[:1] == b"\n"
    assert round_trip(value) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"n": [None, 1.5, math.nan]}, id="nan-beside-none"),
        pytest.param({"n": [1.5, "null", math.inf]}, id="infinity-beside-null-text"),
        pytest.param({"n": {"a": [2.5]}, "m": [[None], [[-math.inf]]]}, id="deeper-than-none"),
        pytest.param({"user": "u-1", "n": math.nan}, id="flat"),
    ],
)
def test_json_nan_never_passes_as_null(value: dict[str, Any]) -> None:
    # orjson writes NaN and infinity as null: the plain encoding must not keep that.
    with pytest.raises(TypeError, match="holds a float"):
        JSONSerializer().dumps(value)


# --- JSON: a plain record's parts, compared and reused ------------------------------


def test_json_parts_of_a_plain_record_are_each_values_encoding() -> None:
    s = JSONSerializer()
    record = s.dumps({"a": [1, 2.5], "b": {"c": None}, "é": "x"})
    parts = s.parts(record)
    assert parts is not None
    assert {k: bytes(v) for k, v in parts.items()} == {
        "a": b"[1,2.5]",
        "b": b'{"c":null}',
        "é": b'"x"',
    }


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(JSONSerializer().dumps({"t": (1, 2)}), id="tagged"),
        pytest.param(b'{"a":1}', id="older"),
        pytest.param(b" [1,2]", id="not-an-object"),
        pytest.param(b' {"a":', id="truncated"),
    ],
)
def test_json_parts_only_of_plain_records(record: bytes) -> None:
    assert JSONSerializer().parts(record) is None


@pytest.mark.parametrize(
    ("stored", "now", "same_value"),
    [
        pytest.param([1, {"x": "y"}], [1, {"x": "y"}], True, id="unchanged"),
        pytest.param([1, {"x": "y"}], [1, {"x": "z"}], False, id="changed-inside"),
        pytest.param([1, 2], (1, 2), False, id="tuple-for-a-list"),
        pytest.param(
            ["12345678-1234-5678-1234-567812345678"],
            [uuid.UUID(int=0x12345678123456781234567812345678)],
            False,
            id="uuid-for-its-str",
        ),
        pytest.param([None], [math.nan], False, id="nan-for-none"),
        pytest.param([1], [True], False, id="bool-for-int"),
        pytest.param([1.0], [1], False, id="int-for-float"),
        pytest.param({"a": 1, "b": 2}, {"b": 2, "a": 1}, False, id="keys-reordered"),
        pytest.param([1], [Color.RED], False, id="int-enum-for-int"),
    ],
)
@pytest.mark.parametrize("walked", [False, True], ids=["census", "walked"])
def test_json_encodes_as_is_exact(stored: Any, now: Any, same_value: bool, walked: bool) -> None:
    s = JSONSerializer()
    record = s.dumps({"k": stored})
    parts = s.parts(record)
    assert parts is not None
    # The walk of the value as decoded: *now* is made of other objects, equal or not.
    walk = s.walk(record, s.loads(record)["k"]) if walked else None
    assert s.encodes_as(now, parts["k"], walk) is same_value


def _fill_empty(value: Any) -> None:
    value[1]["tags"].append((1,))


def _nan_for_none(value: Any) -> None:
    value[1]["gift"] = math.nan


def _tuple_for_list(value: Any) -> None:
    value[1]["tags"] = ()


def _rename(value: Any) -> None:
    value[1]["label"] = value[1].pop("tags")


def _enum_for_int(value: Any) -> None:
    # Equal to the 1 it replaces, and written the same: only its type tells.
    value[0] = Color.RED


@pytest.mark.parametrize(
    ("change", "same_value"),
    [
        pytest.param(lambda value: None, True, id="unchanged"),
        pytest.param(_fill_empty, False, id="an-empty-list-filled"),
        pytest.param(_nan_for_none, False, id="nan-for-none"),
        pytest.param(_tuple_for_list, False, id="empty-tuple-for-empty-list"),
        pytest.param(_rename, False, id="key-renamed"),
        pytest.param(_enum_for_int, False, id="int-enum-for-its-int"),
    ],
)
def test_json_encodes_as_finds_changes_in_place_of_the_walked_value(
    change: Callable[[Any], None], same_value: bool
) -> None:
    # The value is the very one walked: what a handler changed in it, down to the
    # objects of the last level (an empty list, None, an int), is found.
    s = JSONSerializer()
    record = s.dumps({"k": [1, {"gift": None, "tags": []}]})
    parts = s.parts(record)
    assert parts is not None
    value = s.loads(record)["k"]
    walk = s.walk(record, value)
    change(value)
    assert s.encodes_as(value, parts["k"], walk) is same_value


class _Touchy(enum.Enum):
    X = "x"

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("compared")

    __hash__ = enum.Enum.__hash__


def test_json_encodes_as_leaves_a_value_that_fails_to_compare_to_the_census() -> None:
    # orjson writes an Enum member as its value, so the texts match; comparing the
    # objects then calls the member's __eq__, which raises: the value is simply not
    # the one stored.
    s = JSONSerializer()
    record = s.dumps({"k": ["x"]})
    parts = s.parts(record)
    assert parts is not None
    value = s.loads(record)["k"]
    walk = s.walk(record, value)
    value[0] = _Touchy.X
    assert s.encodes_as(value, parts["k"], walk) is False


def test_json_walks_only_plain_records() -> None:
    s = JSONSerializer()
    tagged = s.dumps({"k": [(1, 2)]})
    assert s.walk(tagged, s.loads(tagged)["k"]) is None
    plain = s.dumps({"k": [[1, 2]]})
    value = s.loads(plain)["k"]
    walk = s.walk(plain, value)
    assert walk is not None
    levels = [sorted(map(id, level)) for level in walk]
    assert levels == [[id(value)], [id(value[0])], sorted(map(id, value[0]))]


def test_json_dumps_reusing_parts_equals_a_fresh_encoding() -> None:
    s = JSONSerializer()
    stored = {"cart": [{"sku": "A", "qty": 2, "price": 3.5}], "user": "u", "n": 1}
    parts = s.parts(s.dumps(stored))
    assert parts is not None
    now = {"cart": stored["cart"], "user": "u", "n": 2, "new": [None]}
    out = s.dumps(now, reuse={"cart": parts["cart"], "user": parts["user"]})
    assert out == s.dumps(now)
    assert same(s.loads(out), now)


def test_json_dumps_reusing_parts_keeps_a_key_utf8_cannot_hold() -> None:
    s = JSONSerializer()
    parts = s.parts(s.dumps({"cart": [1, 2]}))
    assert parts is not None
    now = {"cart": [1, 2], "\udcff": 1}
    assert same(s.loads(s.dumps(now, reuse={"cart": parts["cart"]})), now)


def test_json_dumps_reusing_parts_still_tags_a_changed_value() -> None:
    s = JSONSerializer()
    stored = {"cart": [1, 2], "when": "x"}
    parts = s.parts(s.dumps(stored))
    assert parts is not None
    now = {"cart": [1, 2], "when": datetime.date(2024, 1, 1)}
    out = s.dumps(now, reuse={"cart": parts["cart"]})
    assert out[:1] == b"\n"
    assert same(s.loads(out), now)


# --- JSON: what can't be encoded ---------------------------------------------------


class Widget:
    pass


def _cycle() -> dict[str, Any]:
    loop: list[Any] = []
    loop.append(loop)
    return {"loop": loop}


def _deep() -> dict[str, Any]:
    deep: list[Any] = []
    for _ in range(sys.getrecursionlimit() * 2):
        deep = [deep]
    return {"deep": deep}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(
            {"cart": Widget()},
            "session key 'cart' holds a value of type 'Widget' that JSON can't encode",
            id="object",
        ),
        pytest.param(
            {"cart": {"items": [1, Widget()]}},
            "session key 'cart' at ['items'][1] holds a value of type 'Widget'",
            id="nested-object",
        ),
        pytest.param({"t": (1, Widget())}, "session key 't' at [1] ", id="object-in-tuple"),
        pytest.param({"cb": lambda: 1}, "of type 'function'", id="function"),
        pytest.param({"b": bytearray(b"x")}, "of type 'bytearray'", id="bytearray"),
        pytest.param({"price": math.nan}, "session key 'price' holds a float", id="nan"),
        pytest.param({"p": [-math.inf]}, "session key 'p' at [0] holds a float", id="infinity"),
        pytest.param({"s": {math.inf}}, "session key 's' at [0] ", id="infinity-in-set"),
        pytest.param({1: "x"}, "the session has a key 1 of type 'int'", id="int-session-key"),
        pytest.param(
            {"cart": {"n": {None: 1}}},
            "session key 'cart' at ['n'] has a key None of type 'NoneType'",
            id="nested-none-key",
        ),
        pytest.param({"k": {("a",): 1}}, "has a key ('a',) of type 'tuple'", id="tuple-key"),
        pytest.param(
            _cycle(),
            "session key 'loop' at [0] holds a container that contains itself",
            id="cycle",
        ),
        pytest.param(_deep(), "nests too deeply", id="too-deep"),
    ],
)
def test_json_unencodable_raises_type_error_naming_the_key(value: Any, message: str) -> None:
    with pytest.raises(TypeError) as info:
        JSONSerializer().dumps(value)
    assert message in str(info.value)


# --- JSON: what can't be decoded ---------------------------------------------------


def _tag(tag: Any, payload: Any = None, *, extra: int = 2) -> bytes:
    value = [tag, payload][:extra] if extra <= 2 else [tag, payload, None]
    return json.dumps({"k": {MARK: value}}).encode()


MALFORMED = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00", id="random-bytes"),
    pytest.param(JSONSerializer().dumps({"t": (1, 2)})[:-3], id="truncated"),
    pytest.param(b'{"a":"\xff\xfe"}', id="invalid-utf8"),
    pytest.param(b'{"a":"\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
    pytest.param(b'{"a":1} x', id="trailing-garbage"),
    pytest.param(b'{"a":NaN}', id="nan-literal"),
    pytest.param(b'{"a":-Infinity}', id="infinity-literal"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="too-deep"),
    pytest.param(_tag("nope", 1), id="unknown-tag"),
    pytest.param(_tag(["tuple"], []), id="unhashable-tag"),
    pytest.param(json.dumps({"k": {MARK: "tuple"}}).encode(), id="tag-not-a-list"),
    pytest.param(_tag("tuple", extra=1), id="tag-without-payload"),
    pytest.param(_tag("tuple", [], extra=3), id="tag-with-extra-item"),
    pytest.param(_tag("tuple", "ab"), id="tuple-of-a-str"),
    pytest.param(_tag("set", [[1]]), id="set-of-unhashable"),
    pytest.param(_tag("bytes", "not base64!"), id="bad-base64"),
    pytest.param(_tag("bytes", "QQ"), id="unpadded-base64"),
    pytest.param(_tag("bytes", "é"), id="non-ascii-base64"),
    pytest.param(_tag("bytes", 5), id="bytes-of-an-int"),
    pytest.param(_tag("datetime", "2024-13-01T00:00:00"), id="bad-datetime"),
    pytest.param(_tag("date", "yesterday"), id="bad-date"),
    pytest.param(_tag("time", "25:00"), id="bad-time"),
    pytest.param(_tag("date", 20240101), id="date-of-an-int"),
    pytest.param(_tag("uuid", "1234"), id="bad-uuid"),
    pytest.param(_tag("uuid", 5), id="uuid-of-an-int"),
    pytest.param(_tag("decimal", "1.2.3"), id="bad-decimal"),
    pytest.param(_tag("decimal", 1.5), id="decimal-of-a-float"),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_json_malformed_input_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        JSONSerializer().loads(data)


# --- JSON: properties --------------------------------------------------------------

_KEYS = st.text(max_size=6) | st.just(MARK)
_OFFSETS = st.timedeltas(
    min_value=-datetime.timedelta(hours=23, minutes=59),
    max_value=datetime.timedelta(hours=23, minutes=59),
).map(datetime.timezone)
_DATETIMES = st.datetimes(timezones=st.none() | _OFFSETS | st.timezones())
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_HASHABLES = st.recursive(
    _SCALARS | st.binary(max_size=8) | st.dates() | st.uuids(),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
_LEAVES = (
    _SCALARS
    | st.binary()
    | _DATETIMES
    | st.dates()
    | st.times(timezones=st.none() | _OFFSETS)
    | st.uuids()
    | st.decimals()
    | st.sets(_HASHABLES, max_size=4)
    | st.frozensets(_HASHABLES, max_size=4)
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(_KEYS, inner, max_size=4)
        | st.builds(lambda v: {MARK: v}, inner)
        | st.builds(lambda t, v: {MARK: [t, v]}, st.sampled_from([*TAGS, "dict", "?"]), inner)
    )


_VALUES = st.recursive(_LEAVES, _containers, max_leaves=25)


@given(st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_json_any_session_round_trips_exactly(session: dict[str, Any]) -> None:
    assert same(round_trip(session), session)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(_KEYS, inner, max_size=3)
        | st.builds(lambda t, v: {MARK: [t, v]}, st.sampled_from([*TAGS, "dict"]), inner)
    ),
    max_leaves=10,
)


@given(st.binary() | _JSON.map(lambda v: json.dumps(v).encode()))
def test_json_loads_raises_nothing_but_value_error(data: bytes) -> None:
    try:
        JSONSerializer().loads(data)
    except ValueError:
        pass


_PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)


@given(
    st.dictionaries(st.text(max_size=4), _PLAIN, max_size=5),
    st.dictionaries(st.text(max_size=4), _VALUES, max_size=3),
)
def test_json_reusing_unchanged_parts_round_trips_any_session(
    stored: dict[str, Any], written: dict[str, Any]
) -> None:
    s = JSONSerializer()
    parts = s.parts(s.dumps(stored))
    assert parts is not None
    assert all(s.encodes_as(stored[k], parts[k]) for k in stored)
    record = s.dumps(stored)
    decoded = s.loads(record)
    assert all(s.encodes_as(v, parts[k], s.walk(record, v)) for k, v in decoded.items())
    now = {**stored, **written}
    reuse = {k: parts[k] for k in stored if k not in written}
    assert same(s.loads(s.dumps(now, reuse)), now)


# --- pickle --------------------------------------------------------------------------

SIGNATURE = "record signature does not verify"


class Gone:
    pass


def test_pickle_round_trips() -> None:
    s = PickleSerializer("key")
    value = {"p": Point(1, 2), "d": datetime.date(2024, 1, 1), "s": {1, 2}, "c": Color.RED}
    assert same(s.loads(s.dumps(value)), value)


def test_pickle_str_and_bytes_keys_agree() -> None:
    assert PickleSerializer(b"k\xc3\xa9").loads(PickleSerializer("ké").dumps({"a": 1})) == {"a": 1}


def test_pickle_record_signed_with_a_fallback_key_loads() -> None:
    record = PickleSerializer("old").dumps({"a": 1})
    assert PickleSerializer("new", ["older", "old"]).loads(record) == {"a": 1}
    with pytest.raises(ValueError, match=SIGNATURE):
        PickleSerializer("new").loads(record)


def test_pickle_signs_with_a_derived_key_not_the_secret() -> None:
    """A leaked record tag must not double as a cookie signature over the same bytes."""
    record = PickleSerializer("key").dumps({"a": 1})
    assert record[:32] != hmac.digest(b"key", record[32:], "sha256")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda r: r[:-1] + bytes([r[-1] ^ 1]), id="payload-bit"),
        pytest.param(lambda r: bytes([r[0] ^ 1]) + r[1:], id="tag-bit"),
        pytest.param(lambda r: r[:40], id="truncated"),
        pytest.param(lambda r: r[:31], id="shorter-than-a-tag"),
        pytest.param(lambda r: b"", id="empty"),
        pytest.param(lambda r: r[32:], id="tag-stripped"),
    ],
)
def test_pickle_tampered_record_raises_value_error(tamper: Any) -> None:
    s = PickleSerializer("key")
    with pytest.raises(ValueError, match=SIGNATURE):
        s.loads(tamper(s.dumps({"a": 1})))


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(pickle.dumps, id="bare-pickle"),
        pytest.param(lambda obj: bytes(32) + pickle.dumps(obj), id="zero-tag"),
        pytest.param(
            lambda obj: hmac.digest(b"key", pickle.dumps(obj), "sha256") + pickle.dumps(obj),
            id="signed-with-raw-secret",
        ),
        pytest.param(PickleSerializer("other").dumps, id="signed-with-other-key"),
    ],
)
def test_pickle_forged_record_is_never_unpickled(forge: Any, tmp_path: Path) -> None:
    """Whoever can write to the store but lacks the key must not get code run."""
    marker = tmp_path / "sprung"
    payload = pickle.dumps({"a": PickleTrap(marker)})
    with pytest.raises(ValueError, match=SIGNATURE):
        PickleSerializer("key", ["fallback"]).loads(forge({"a": PickleTrap(marker)}))
    assert not marker.exists()
    pickle.loads(payload)  # the trap is real: plain pickle does spring it
    assert marker.exists()


def test_pickle_signed_record_that_no_longer_unpickles_raises_value_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = PickleSerializer("key")
    record = s.dumps({"g": Gone()})
    monkeypatch.delattr(sys.modules[__name__], "Gone")
    with pytest.raises(ValueError, match="does not unpickle"):
        s.loads(record)


def _local_class() -> object:
    class Local:
        pass

    return Local()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(threading.Lock(), id="lock"),
        pytest.param(lambda: 1, id="lambda"),
        pytest.param(_local_class(), id="local-class"),
    ],
)
def test_pickle_unpicklable_raises_type_error_naming_the_key(value: Any) -> None:
    with pytest.raises(TypeError, match="session key 'bad' holds a value pickle can't encode"):
        PickleSerializer("key").dumps({"ok": 1, "bad": value})


def test_pickle_needs_a_secret_key() -> None:
    with pytest.raises(ConfigError, match="secret_key"):
        PickleSerializer("")


# --- resolve_serializer and helpers ------------------------------------------------


class Custom:
    def dumps(self, obj: Any) -> str:
        return repr(obj)

    def loads(self, data: bytes) -> Any:
        return data


def test_resolve_json() -> None:
    serializer = resolve_serializer("json", "key", [])
    assert isinstance(serializer, JSONSerializer)
    assert serializer.loads(serializer.dumps({"a": [1, "b"]})) == {"a": [1, "b"]}


def test_resolve_pickle_uses_the_keys() -> None:
    s = resolve_serializer("pickle", "new", ["old"])
    assert isinstance(s, PickleSerializer)
    assert s.loads(PickleSerializer("old").dumps([1])) == [1]


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(Custom(), id="instance"),
        pytest.param(types.SimpleNamespace(dumps=repr, loads=bytes), id="namespace"),
        pytest.param(json, id="the-json-module"),
    ],
)
def test_resolve_object_with_dumps_and_loads_is_returned_as_is(spec: object) -> None:
    assert resolve_serializer(spec, "key", []) is spec


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("yaml", id="unknown-name"),
        pytest.param("JSON", id="wrong-case"),
        pytest.param(None, id="none"),
        pytest.param(42, id="int"),
        pytest.param(object(), id="plain-object"),
        pytest.param(types.SimpleNamespace(dumps=repr), id="no-loads"),
        pytest.param(types.SimpleNamespace(dumps=repr, loads="x"), id="loads-not-callable"),
        pytest.param(Custom, id="a-class"),
    ],
)
def test_resolve_anything_else_raises_config_error(spec: object) -> None:
    with pytest.raises(ConfigError, match=r"^option 'serializer' must be 'json', 'pickle', or"):
        resolve_serializer(spec, "key", [])


def test_resolve_a_class_says_to_pass_an_instance() -> None:
    with pytest.raises(ConfigError, match="pass an instance"):
        resolve_serializer(JSONSerializer, "key", [])


def test_built_in_serializers_satisfy_the_protocol() -> None:
    assert isinstance(JSONSerializer(), Serializer)
    assert isinstance(PickleSerializer("key"), Serializer)
    assert isinstance(Custom(), Serializer)


@pytest.mark.parametrize(
    ("serializer", "expected"),
    [
        pytest.param(Custom(), "{'é': 1}".encode(), id="str-as-utf8"),
        pytest.param(JSONSerializer(), b' {"\xc3\xa9":1}', id="bytes-as-is"),
    ],
)
def test_dumps_bytes(serializer: Serializer, expected: bytes) -> None:
    assert dumps_bytes(serializer, {"é": 1}) == expected


def test_dumps_bytes_rejects_other_output() -> None:
    odd = types.SimpleNamespace(dumps=lambda obj: 42, loads=bytes)
    with pytest.raises(TypeError, match="returned 'int'"):
        dumps_bytes(odd, {})


# -- through the middleware ----------------------------------------------------------


def test_pickle_serializer_round_trips_through_the_middleware() -> None:

    def put(session: Session, request: Request) -> str:
        session["when"] = datetime.datetime(2026, 1, 2, 3, 4, 5)
        session["pair"] = (1, 2)
        return "ok"

    def look(session: Session, request: Request) -> Any:
        return [repr(session["when"]), repr(session["pair"])]

    client, _ = make_client({"/put": put, "/": look}, serializer="pickle")
    client.get("/put")
    assert body(client.get("/")) == ["datetime.datetime(2026, 1, 2, 3, 4, 5)", "(1, 2)"]


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=5), inner, max_size=4)
            ),
            max_leaves=12,
        ),
        min_size=1,
        max_size=6,
    ),
    st.data(),
)
def test_a_plain_record_taken_apart_around_some_values_gives_what_the_whole_does(
    data: dict[str, Any], draw: st.DataObject
) -> None:
    s = JSONSerializer()
    cut_from = draw.draw(st.integers(1, 40))
    text, cuts = s.dumps_cut(data, {}, cut_from)
    assert all(len(part) >= cut_from for _, _, part in cuts)
    around, values, done = [], {}, 0
    for key, at, part in cuts:
        around.append(text[done:at])
        values[key] = part
        done = at
    around.append(text[done:])
    whole = b"".join(p for pair in zip(around, [*values.values(), b""], strict=True) for p in pair)
    assert whole == s.dumps(data)
    expected = s.parts(whole)
    assert expected is not None
    found = s.parts_around(around, values)
    assert found is not None
    assert {k: bytes(v) for k, v in found.items()} == {k: bytes(v) for k, v in expected.items()}


def test_pieces_around_values_that_make_no_record_are_not_taken_apart() -> None:
    s = JSONSerializer()
    assert s.parts_around([b' {"a":', b"}"], {"b": b"1"}) is None  # "b" isn't in the record
    assert s.parts_around([b"{", b"}"], {"a": b"1"}) is None  # not a plain record
