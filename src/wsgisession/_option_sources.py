"""Reading options from text: ini files, PasteDeploy keys and environment variables.

Each reader returns the parsed values together with where each one was set, so that
:class:`~wsgisession.config.Config` names the source in every error it raises and
``wsgisession check`` can show it. Names are strict everywhere: a key of an ini
section, or a variable under the environment prefix, that names no option is an
error that suggests the closest option, never a setting silently ignored.
"""

from __future__ import annotations

import configparser
import difflib
import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ._option_kinds import CHECKS, PARSERS, parse_store_option
from ._option_table import BY_NAME
from .errors import ConfigError

__all__ = [
    "DEFAULT_ENV_PREFIX",
    "Read",
    "joined",
    "located",
    "read_env",
    "read_ini",
    "read_text",
    "unknown_option",
]

#: What the environment variables of :meth:`Config.from_env` start with by default.
DEFAULT_ENV_PREFIX: Final = "WSGISESSION_"

# The part of a variable's name after the prefix: an option's name in capitals.
_ENV_NAME: Final = re.compile(r"[A-Z][A-Z0-9_]*")
_STORE: Final = "STORE_"


@dataclass(frozen=True, slots=True)
class Read:
    """Options read from one source, parsed to their types but not yet checked together.

    ``sources`` says where each option, or store option ``store.NAME``, was set;
    ``where`` names the source as a whole, for an error about no option in particular.
    """

    where: str
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def located(exc: ConfigError, where: str | None) -> ConfigError:
    """*exc* with *where* its bad value came from in front, if that is known."""
    return ConfigError(f"{where}: {exc}") if where else exc


def joined(sources: Iterable[str]) -> str:
    """The distinct *sources*, in order, as one phrase: ``environment variables A, B``."""
    distinct = list(dict.fromkeys(sources))
    variable = "environment variable "
    if len(distinct) > 1 and all(source.startswith(variable) for source in distinct):
        return "environment variables " + ", ".join(s[len(variable) :] for s in distinct)
    return ", ".join(distinct)


def unknown_option(
    name: str, where: str | None = None, spell: Callable[[str], str] = str
) -> ConfigError:
    """The error for option *name*, which does not exist, naming the closest that does.

    *spell* writes an option's name as the source spells it (``session.timeout`` in a
    PasteDeploy ``[app:main]``).
    """
    place = f" in {where}" if where else ""
    return ConfigError(f"unknown option {spell(name)!r}{place}; {_closest(name, spell)}")


def _closest(name: str, spell: Callable[[str], str]) -> str:
    matches = difflib.get_close_matches(name.lower(), BY_NAME, n=1)
    if matches:
        return f"did you mean {spell(matches[0])!r}?"
    return "no option has a name like it (the option reference lists them all)"


# -- ini files -------------------------------------------------------------------------


def read_ini(path: str | os.PathLike[str], section: str) -> Read:
    """Read the options of *section* of the ini file at *path*.

    Without that section, the ``section.``-prefixed keys of a PasteDeploy
    ``[app:main]`` are read instead (see :meth:`Config.from_ini`).

    :raises ConfigError: The file is unreadable or malformed, has neither the section
        nor such keys, or a key or value is bad; the message names the file.
    """
    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        # [DEFAULT] often holds the app's own keys (PasteDeploy's debug), which are
        # not options: read it as a section of its own rather than merged in.
        parser = configparser.RawConfigParser(default_section="\x00none")
        parser.read_string(text, source=name)
        if parser.has_section(section):
            return read_text(dict(parser.items(section)), f"[{section}] of {name}")
        items = _paste_items(text, name, section)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {name!r}: {exc}") from exc
    except configparser.Error as exc:
        raise ConfigError(f"config file {name!r} is malformed: {_where(exc)}") from None
    if not items:
        raise ConfigError(
            f"config file {name!r} has no [{section}] section and no '{section}.' keys "
            "in [app:main]"
        )
    return read_text(items, f"[app:main] of {name}", f"{section}.{{}}".format)


def read_text(items: Mapping[str, str], where: str, spell: Callable[[str], str] = str) -> Read:
    """Parse the text *items* of one section, set in *where*, to the options' types.

    ``store.NAME`` keys become ``store_options``, their values parsed by
    :func:`parse_store_option`; they win over the same name in a ``store_options``
    JSON object. *spell* writes a name as the section spells it, for errors.

    :raises ConfigError: A key names no option, or a value does not parse.
    """
    read = Read(where)
    store_options: dict[str, Any] = {}
    for raw_name, text in items.items():
        name = raw_name.strip()
        option = BY_NAME.get(name)
        if option is None and not name.startswith("store."):
            raise unknown_option(name, where, spell)
        try:
            if option is None:
                option_name = name[len("store.") :]
                store_options[option_name] = parse_store_option(option_name, text)
            else:
                read.values[name] = PARSERS[option.kind](name, text.strip())
        except ConfigError as exc:
            raise located(exc, where) from exc
        read.sources[name] = where
    _add_store_options(read, store_options)
    return read


def _add_store_options(read: Read, store_options: dict[str, Any]) -> None:
    """Merge the ``store.NAME`` settings into the ``store_options`` object of *read*.

    Every key of a ``store_options`` object is recorded as set where the object was,
    unless a ``store.NAME`` setting of its own replaced it.
    """
    whole = read.values.get("store_options")
    if isinstance(whole, Mapping):
        for name in whole:
            read.sources.setdefault(f"store.{name}", read.sources["store_options"])
        if store_options:
            read.values["store_options"] = {**whole, **store_options}
    elif store_options and whole is None:
        read.values["store_options"] = store_options
    # Anything else is no mapping, which the option's check refuses, naming its source.


def _paste_items(text: str, name: str, section: str) -> dict[str, str]:
    """Return the ``section.``-prefixed keys of ``[app:main]``, prefix removed."""
    # PasteDeploy interpolates its files with these two defaults, so a value written
    # for it (``%(here)s/sessions``, ``%%``) must mean the same here.
    here = os.path.dirname(os.path.abspath(name))
    parser = configparser.ConfigParser(defaults={"here": here, "__file__": os.path.abspath(name)})
    parser.read_string(text, source=name)
    if not parser.has_section("app:main"):
        return {}
    prefix = f"{section}."
    return {
        key[len(prefix) :]: parser.get("app:main", key)
        for key in parser.options("app:main")
        if key.startswith(prefix)
    }


def _where(exc: configparser.Error) -> str:
    """What *exc* says is wrong and where, without the text of the line (a secret?)."""
    # DuplicateOptionError -> "duplicate option"
    what = re.sub(r"(?<!^)(?=[A-Z])", " ", type(exc).__name__.removesuffix("Error")).lower()
    place = []
    section = getattr(exc, "section", None)
    if isinstance(section, str):
        place.append(f"section [{section}]")
    option = getattr(exc, "option", None)
    if isinstance(option, str):
        place.append(f"key {option!r}")
    errors = getattr(exc, "errors", None)
    lineno = getattr(exc, "lineno", None)
    if errors:
        lineno = errors[0][0]
    if isinstance(lineno, int):
        place.append(f"line {lineno}")
    return f"{what} error" + (f" at {', '.join(place)}" if place else "")


# -- environment variables -----------------------------------------------------------------


def read_env(prefix: str, environ: Mapping[str, str], ignore: Iterable[str] = ()) -> Read:
    """Parse and check the options set by *environ*'s variables named *prefix* + ….

    See :meth:`Config.from_env` for the naming rule. Each value is parsed as in an
    ini file and checked on its own, so an error names its variable. A variable
    under the prefix that names no option is an error, unless a name or pattern of
    *ignore* matches it.

    :raises ConfigError: The prefix is empty, a variable names no option, or its value
        is bad.
    """
    if not isinstance(prefix, str) or not prefix:
        # Every variable of the process (PATH, HOME) would be under an empty prefix.
        raise ConfigError(f"the environment prefix must be a non-empty string, got {prefix!r}")
    patterns = _ignore_patterns(ignore)
    read = Read(f"the environment variables {prefix}*")
    store_options: dict[str, Any] = {}
    for variable in sorted(environ):
        if not variable.startswith(prefix) or _ignored(variable, patterns):
            continue
        rest = variable[len(prefix) :]
        where = f"environment variable {variable}"
        option = BY_NAME.get(rest.lower()) if _ENV_NAME.fullmatch(rest) else None
        store_option = rest.startswith(_STORE) and len(rest) > len(_STORE)
        if option is None and not (store_option and _ENV_NAME.fullmatch(rest)):
            raise _unknown_variable(variable, prefix, rest)
        text = environ[variable]
        try:
            if option is not None:
                parsed = PARSERS[option.kind](option.name, text.strip())
                read.values[option.name] = CHECKS[option.kind](option.name, parsed)
                read.sources[option.name] = where
            else:
                name = rest[len(_STORE) :].lower()
                store_options[name] = parse_store_option(name, text)
                read.sources[f"store.{name}"] = where
        except ConfigError as exc:
            raise located(exc, where) from exc
    _add_store_options(read, store_options)
    return read


def _ignore_patterns(ignore: Iterable[str]) -> tuple[str, ...]:
    # A lone string is iterable too: its letters would each become a pattern.
    if isinstance(ignore, str | bytes):
        raise ConfigError(
            f"ignore must be a list of variable names, not one string: use [{ignore!r}]"
        )
    patterns = tuple(ignore)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"ignore must hold variable names, got {pattern!r}")
    return patterns


def _ignored(variable: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(variable, pattern) for pattern in patterns)


def _unknown_variable(variable: str, prefix: str, rest: str) -> ConfigError:
    if rest == _STORE:
        problem = f"environment variable {variable} names no store option: {prefix}STORE_NAME"
    elif not _ENV_NAME.fullmatch(rest) and rest.upper() in _known_rests(rest.upper()):
        problem = (
            f"environment variable {variable} is not read: names are in capitals; "
            f"did you mean {prefix}{rest.upper()}?"
        )
    else:
        matches = difflib.get_close_matches(rest.upper(), [n.upper() for n in BY_NAME], n=1)
        problem = f"unknown environment variable {variable}" + (
            f"; did you mean {prefix}{matches[0]}?" if matches else ": it names no option"
        )
    return ConfigError(
        f"{problem} (a variable under {prefix} that is not meant for wsgisession must be "
        "listed in from_env's ignore, or the command line's --env-ignore)"
    )


def _known_rests(rest: str) -> set[str]:
    """The names after the prefix that *rest* would be read as, were it in capitals."""
    known = {name.upper() for name in BY_NAME}
    if rest.startswith(_STORE) and len(rest) > len(_STORE):
        known.add(rest)
    return known
