"""What each kind of option accepts: strict checks of Python values, parsers of text.

Keyword arguments and mappings go through :data:`CHECKS`; ini files and environment
variables are text, which :data:`PARSERS` turns into values that are then checked the
same way. The option table in :mod:`wsgisession.config` names a kind per option.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from importlib.metadata import EntryPoint
from typing import Any, Final, Literal

from .errors import ConfigError
from .serializers import check_serializer
from .stores.base import Store

__all__ = [
    "CHECKS",
    "KEY_ADVICE",
    "MAX_SECONDS",
    "PARSERS",
    "SameSite",
    "import_object",
    "parse_store_option",
]

SameSite = Literal["Strict", "Lax", "None"]

# RFC 6265 token characters, the only ones a cookie name may use.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A host name or address; werkzeug writes Domain unquoted, so ';' or CRLF would
# add attributes or headers.
_DOMAIN: Final = re.compile(r"[0-9A-Za-z._-]+")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def parse_store_option(name: str, text: str) -> Any:
    """Parse the value of store option *name*: a bool, ``none``, a number, JSON, or the text.

    Integers may be written as Python writes them (``0o640``, ``0x1f``). A value in
    double quotes is text whatever it looks like (``"123456"`` for a numeric password).
    """
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for number in (partial(int, base=0), float):
        try:
            value = number(text)
        except ValueError:
            continue
        # float() also reads "nan" and "infinity", which are words here, not numbers.
        if math.isfinite(value):
            return value
    if text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            # Not the text: a JSON object of options may hold a password.
            raise ConfigError(
                f"store option {name!r} is not valid JSON: {exc.msg} at character {exc.pos}"
            ) from None
    return text


# -- strict checks of Python values ---------------------------------------------


#: The longest duration an option or a key timeout takes, in seconds: ten years. A
#: longer one is a mistake, and would fail later (an overflow, a store's TTL limit).
MAX_SECONDS: Final = 315_360_000

#: How to make a good secret key, as warnings and errors say it.
KEY_ADVICE: Final = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _type_error(name: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"option {name!r} must be {expected}, got {_shown(value)}")


def _shown(value: object) -> str:
    """*value* as an error message may quote it: short, and never a long secret."""
    scalar = isinstance(value, str | bytes | int | float | type(None))
    if scalar and len(repr(value)) <= 40:
        return repr(value)
    return f"a {type(value).__name__} too long to show" if scalar else f"a {type(value).__name__}"


def _check_secret(name: str, value: object) -> str | bytes:
    # Never quote the value: whatever was passed here may be a key.
    if not isinstance(value, str | bytes):
        raise ConfigError(f"option {name!r} must be a string, got a {type(value).__name__}")
    if not value:
        raise ConfigError(f"option {name!r} must not be empty; {KEY_ADVICE}")
    return value


def _check_secrets(name: str, value: object) -> tuple[str | bytes, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(
            f"option {name!r} must be a list of strings, got a {type(value).__name__}"
        )
    return tuple(_check_secret(name, item) for item in value)


def _check_int(
    name: str, value: object, minimum: int, unit: str = "seconds", maximum: int | None = None
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, f"a whole number of {unit}", value)
    if value < minimum:
        raise ConfigError(f"option {name!r} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(
            f"option {name!r} must be at most {maximum} {unit} (ten years), got {_shown(value)}"
        )
    return value


def _check_seconds(name: str, value: object) -> int:
    return _check_int(name, value, 1, maximum=MAX_SECONDS)


def _check_optional_seconds(name: str, value: object) -> int | None:
    return None if value is None else _check_seconds(name, value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _type_error(name, "True or False", value)
    return value


def _check_encrypt(name: str, value: object) -> bool | str:
    if isinstance(value, bool) or value == "migrate":
        return value
    raise _type_error(name, "True, False or 'migrate'", value)


def _check_optional_bool(name: str, value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise _type_error(name, "True, False or None", value)


def _check_str(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _type_error(name, "a non-empty string", value)
    return value


def _check_optional_str(name: str, value: object) -> str | None:
    return None if value is None else _check_str(name, value)


def _check_cookie_name(name: str, value: object) -> str:
    text = _check_str(name, value)
    if not _TOKEN.fullmatch(text):
        raise ConfigError(
            f"option {name!r} must be a cookie token (letters, digits, -_.), got {text!r}"
        )
    return text


def _check_domain(name: str, value: object) -> str | None:
    text = _check_optional_str(name, value)
    if text is not None and not _DOMAIN.fullmatch(text):
        raise ConfigError(
            f"option {name!r} must be a host name such as 'example.org', got {text!r}"
        )
    return text


def _check_path(name: str, value: object) -> str:
    text = _check_str(name, value)
    if not text.startswith("/") or ";" in text:
        raise ConfigError(f"option {name!r} must be a URL path starting with '/', got {text!r}")
    return text


def _check_samesite(name: str, value: object) -> SameSite | None:
    if value is None:
        return None
    allowed: SameSite
    for allowed in ("Strict", "Lax", "None"):
        if isinstance(value, str) and value.lower() == allowed.lower():
            return allowed
    raise _type_error(name, "'Strict', 'Lax', 'None' or None", value)


def _check_store(name: str, value: object) -> object:
    if isinstance(value, Store) or not isinstance(value, str):
        # Store objects, and driver objects that open_store() wraps or refuses.
        return value
    return _check_str(name, value)


def _check_mapping(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _type_error(name, "a mapping of option names to values", value)
    return dict(value)


def _check_serializer(name: str, value: object) -> object:
    return check_serializer(value)


def _check_initializer(name: str, value: object) -> object:
    if value is None or isinstance(value, Mapping) or callable(value):
        return value
    raise _type_error(name, "a mapping or a callable returning one", value)


def _check_handler(name: str, value: object) -> object:
    if value is None or callable(value):
        return value
    raise _type_error(name, "a callable or None", value)


def _check_size(name: str, value: object) -> int:
    return _check_int(name, value, 1, "bytes")


def _check_interval(name: str, value: object) -> int:
    return _check_int(name, value, 0, maximum=MAX_SECONDS)


def _check_optional_count(name: str, value: object) -> int | None:
    return None if value is None else _check_int(name, value, 1, "sessions")


def _check_listeners(name: str, value: object) -> tuple[Callable[[Any], object], ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise _type_error(name, "a list of callables", value)
    for item in value:
        if not callable(item):
            raise _type_error(name, "a list of callables", item)
    return tuple(value)


CHECKS: Final[dict[str, Callable[[str, Any], Any]]] = {
    "secret": _check_secret,
    "secrets": _check_secrets,
    "store": _check_store,
    "mapping": _check_mapping,
    "seconds": _check_seconds,
    "seconds?": _check_optional_seconds,
    "bool": _check_bool,
    "bool?": _check_optional_bool,
    "encrypt": _check_encrypt,
    "str": _check_str,
    "str?": _check_optional_str,
    "cookie_name": _check_cookie_name,
    "domain": _check_domain,
    "path": _check_path,
    "samesite": _check_samesite,
    "serializer": _check_serializer,
    "initializer": _check_initializer,
    "handler": _check_handler,
    "size": _check_size,
    "interval": _check_interval,
    "count?": _check_optional_count,
    "listeners": _check_listeners,
}


# -- parsing of text values ---------------------------------------------------------


# How errors list the words a boolean may be written as; words are read in any case.
_BOOL_WORDS: Final = "true or false (or yes/no, on/off, 1/0)"


def _parse_bool(name: str, text: str, expected: str = _BOOL_WORDS) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise _type_error(name, expected, text)


def _parse_encrypt(name: str, text: str) -> bool | str:
    if text.lower() == "migrate":
        return "migrate"
    return _parse_bool(name, text, f"migrate, {_BOOL_WORDS}")


def _parse_optional_bool(name: str, text: str) -> bool | None:
    if text.lower() in ("", "none"):
        return None
    return _parse_bool(name, text, f"none, {_BOOL_WORDS}")


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _type_error(name, "a whole number", text) from None


def _parse_optional_int(name: str, text: str) -> int | None:
    return None if text.lower() in ("", "none") else _parse_int(name, text)


def _parse_text(name: str, text: str) -> str:
    return text


def _parse_optional_text(name: str, text: str) -> str | None:
    return None if text.lower() in ("", "none") else text


def _parse_list(name: str, text: str) -> list[str]:
    parts = text.splitlines() if "\n" in text else text.split(",")
    return [part.strip() for part in parts if part.strip()]


def _parse_secret_list(name: str, text: str) -> list[str]:
    # One per line only: a key may hold a comma, and splitting there would turn one
    # old key into several short ones, each of them accepted.
    return [part.strip() for part in text.splitlines() if part.strip()]


def _parse_samesite(name: str, text: str) -> str | None:
    # In text the empty value means "no attribute"; "None", in any case, is the
    # attribute. The check turns any case into the attribute's spelling.
    return None if text == "" else text


def _parse_mapping(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        # The message gives the position, never the text: the object may hold a password.
        raise ConfigError(f"option {name!r} must be a JSON object: {exc}") from None


def _parse_serializer(name: str, text: str) -> object:
    if text.lower() in ("json", "pickle"):
        return text.lower()
    return import_object(name, text)


def _parse_initializer(name: str, text: str) -> object:
    return None if text.lower() in ("", "none") else import_object(name, text)


def import_object(name: str, target: str) -> object:
    """Import ``package.module:name`` for option *name*, as ini files spell objects."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"option {name!r} must be written 'package.module:name', got {target!r}")
    try:
        obj: object = EntryPoint(name, target, "wsgisession.options").load()
    # Importing runs the module, which may fail in any way; all of it is a bad option.
    except Exception as exc:
        raise ConfigError(f"option {name!r}: cannot import {target!r}: {exc}") from exc
    return obj


def _parse_listeners(name: str, text: str) -> list[object]:
    return [import_object(name, target) for target in _parse_list(name, text)]


PARSERS: Final[dict[str, Callable[[str, str], Any]]] = {
    "secret": _parse_text,
    "secrets": _parse_secret_list,
    "store": _parse_text,
    "mapping": _parse_mapping,
    "seconds": _parse_int,
    "seconds?": _parse_optional_int,
    "bool": _parse_bool,
    "bool?": _parse_optional_bool,
    "encrypt": _parse_encrypt,
    "str": _parse_text,
    "str?": _parse_optional_text,
    "cookie_name": _parse_text,
    "domain": _parse_optional_text,
    "path": _parse_text,
    "samesite": _parse_samesite,
    "serializer": _parse_serializer,
    "initializer": _parse_initializer,
    "handler": _parse_initializer,
    "size": _parse_int,
    "interval": _parse_int,
    "count?": _parse_optional_int,
    "listeners": _parse_listeners,
}
