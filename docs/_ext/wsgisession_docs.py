"""Sphinx extension: the configuration reference, generated from ``OPTIONS``, and the
migration guides' before-and-after diffs.

``.. wsgisession-options::`` expands to one ``confval`` entry per option, in the
table's order, with its type, default, ini spelling and environment variable, so
the reference is written once, in code. Sphinx warns about a ``:confval:`` reference
to an option that has no entry, and the ``-W`` build turns that into an error, so
prose cannot keep naming an option that was renamed or removed.

``.. wsgisession-diff:: BEFORE AFTER`` shows what changes from one file of the
repository to another (paths from its root), as a unified diff labelled with those
paths: ``literalinclude``'s ``:diff:`` labels it with the build machine's.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from wsgisession.config import OPTIONS, Option

if TYPE_CHECKING:
    from sphinx.application import Sphinx

ENV_PREFIX: Final = "WSGISESSION_"

# kind -> (the Python value it takes, how ini files and environment variables spell it)
KINDS: Final[dict[str, tuple[str, str]]] = {
    "secret": ("a non-empty string or bytes", "the text"),
    "secrets": (
        "a list of non-empty strings or bytes",
        "one per line (a key may hold a comma)",
    ),
    "store": (
        "a store URL, a ``Store``, a ``sqlalchemy.Engine`` or a ``redis`` client",
        "a store URL",
    ),
    "mapping": (
        "a mapping of the store's keyword arguments",
        "one ``store.NAME`` key per store option (environment: ``WSGISESSION_STORE_NAME``), "
        "or the whole mapping as a JSON object",
    ),
    "seconds": ("a whole number of seconds, at least 1", "a whole number"),
    "seconds?": (
        "a whole number of seconds, at least 1, or ``None``",
        "a whole number, or ``none`` or nothing for ``None``",
    ),
    "bool": (
        "``True`` or ``False``",
        "``true``/``false``, ``yes``/``no``, ``on``/``off`` or ``1``/``0``, in any case",
    ),
    "bool?": (
        "``True``, ``False`` or ``None``",
        "as a bool, or ``none`` or nothing for ``None``",
    ),
    "encrypt": (
        '``True``, ``False`` or ``"migrate"``',
        "as a bool, or ``migrate``",
    ),
    "str": ("a non-empty string", "the text"),
    "str?": ("a non-empty string or ``None``", "the text, or ``none`` or nothing for ``None``"),
    "cookie_name": ("a cookie name: letters, digits and ``-_.`` and the like", "the name"),
    "domain": (
        "a host name such as ``example.org``, or ``None``",
        "the host name, or ``none`` or nothing for ``None``",
    ),
    "path": ("a URL path starting with ``/``", "the path"),
    "samesite": (
        '``"Strict"``, ``"Lax"``, ``"None"``, or ``None`` for no attribute',
        "``Strict``, ``Lax`` or ``None``, in any case; nothing for no attribute",
    ),
    "serializer": (
        '``"json"``, ``"pickle"``, or an object with ``dumps`` and ``loads``',
        "``json`` or ``pickle`` in any case, or an object as ``package.module:name``",
    ),
    "initializer": (
        "a mapping, a callable returning one, or ``None``",
        "``package.module:name``, or ``none``",
    ),
    "handler": (
        "a callable, or ``None``",
        "``package.module:name``, or ``none``",
    ),
    "size": ("a whole number of bytes, at least 1", "a whole number"),
    "interval": ("a whole number of seconds, 0 or more", "a whole number"),
    "count?": ("a whole number, at least 1, or ``None``", "a whole number, or ``none``"),
    "listeners": (
        "a list of callables",
        "``package.module:name`` each, one per line or comma-separated",
    ),
}

_CODE: Final = re.compile(r"`([^`]+)`")


def env_variable(option: Option) -> str:
    """The environment variable that sets *option* for ``from_env()``."""
    return ENV_PREFIX + option.name.upper()


def default_text(option: Option) -> str:
    """The option's default as the reference shows it."""
    if option.name == "secret_key":
        return "required"
    value = option.default
    if isinstance(value, str):
        return f'``"{value}"``'
    return "``[]``" if value == () else f"``{value!r}``"


def options_rst() -> str:
    """Return the reStructuredText of the configuration reference.

    :raises KeyError: An option has a kind :data:`KINDS` does not describe yet.
    """
    lines: list[str] = []
    for option in OPTIONS:
        python_type, text_form = KINDS[option.kind]
        lines += [
            f".. confval:: {option.name}",
            f"   :type: {python_type}",
            f"   :default: {default_text(option)}",
            "",
            f"   {_sentence(option.doc)}",
            "",
            f"   :In ini files: {text_form}",
            f"   :Environment: ``{env_variable(option)}``, spelled as in ini files",
            "",
        ]
    return "\n".join(lines)


def _sentence(markdown: str) -> str:
    text = _CODE.sub(r"``\1``", markdown)
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "…")) else ".")


class OptionsDirective(SphinxDirective):
    """``.. wsgisession-options::``: the generated reference, parsed in place."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        content = StringList(options_rst().splitlines(), source="wsgisession.config.OPTIONS")
        self.state.nested_parse(content, self.content_offset, container)
        return list(container.children)


class DiffDirective(SphinxDirective):
    """``.. wsgisession-diff:: BEFORE AFTER``: the unified diff of two repository files."""

    required_arguments = 2
    has_content = False

    def run(self) -> list[nodes.Node]:
        root = Path(self.env.srcdir).parent
        texts = []
        for name in self.arguments:
            path = root / name
            self.env.note_dependency(str(path))  # a changed example rebuilds the page
            texts.append(path.read_text(encoding="utf-8").splitlines(keepends=True))
        before, after = self.arguments
        diff = "".join(difflib.unified_diff(texts[0], texts[1], before, after))
        block = nodes.literal_block(diff, diff)
        block["language"] = "diff"
        return [block]


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the ``wsgisession-options`` and ``wsgisession-diff`` directives."""
    app.add_directive("wsgisession-options", OptionsDirective)
    app.add_directive("wsgisession-diff", DiffDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
