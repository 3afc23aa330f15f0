"""The documentation stays true to the code.

The configuration reference is generated from ``config.OPTIONS`` by the extension in
``docs/_ext``; these tests fail when that generator, the prose's option references,
the API page or the store-writing guide's example drift from the code. The build
itself (``python -m sphinx -W``) runs in CI.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import wsgisession
import wsgisession.paste
import wsgisession.stores
import wsgisession.testing
from wsgisession.config import OPTIONS
from wsgisession.stores import Store
from wsgisession.testing import StoreConformance

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _load(path: Path) -> ModuleType:
    name = f"docs_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing look modules up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def extension() -> ModuleType:
    pytest.importorskip("sphinx", reason="the docs extension needs Sphinx: pip install -e .[docs]")
    return _load(DOCS / "_ext" / "wsgisession_docs.py")


def _pages() -> list[Path]:
    return sorted(path for path in DOCS.rglob("*.rst") if "_build" not in path.parts)


def test_every_option_kind_has_a_description(extension: ModuleType) -> None:
    """A new kind of option needs a line in ``docs/_ext/wsgisession_docs.py`` KINDS."""
    missing = sorted({option.kind for option in OPTIONS} - set(extension.KINDS))

    assert not missing, f"describe these option kinds in the docs extension's KINDS: {missing}"


def test_reference_lists_every_option_in_table_order(extension: ModuleType) -> None:
    reference = extension.options_rst()

    listed = re.findall(r"^\.\. confval:: (\w+)$", reference, re.MULTILINE)
    assert listed == [option.name for option in OPTIONS]
    for option in OPTIONS:
        assert f"``WSGISESSION_{option.name.upper()}``" in reference


def test_reference_shows_each_default(extension: ModuleType) -> None:
    reference = extension.options_rst()

    assert ":default: required" in reference  # secret_key
    assert ':default: ``"file:./sessions"``' in reference
    assert ":default: ``3600``" in reference
    assert ":default: ``None``" in reference


def test_configuration_page_includes_the_generated_reference() -> None:
    page = (DOCS / "configuration.rst").read_text(encoding="utf-8")

    assert re.search(r"^\.\. wsgisession-options::$", page, re.MULTILINE)


def test_prose_names_only_options_that_exist() -> None:
    """Sphinx warns about these too, but only in a full build; this says where."""
    known = {option.name for option in OPTIONS}
    unknown = [
        f"{page.relative_to(DOCS)}: {name}"
        for page in _pages()
        for name in re.findall(r":confval:`([^`<]+)`", page.read_text(encoding="utf-8"))
        if name not in known
    ]

    assert not unknown


def _documented() -> set[str]:
    """Dotted names the docs pages document with autodoc or py directives."""
    names: set[str] = set()
    for page in _pages():
        module = ""
        for line in page.read_text(encoding="utf-8").splitlines():
            if found := re.match(r"\.\. (?:py:)?module:: ([\w.]+)$", line):
                module = found.group(1)
            elif found := re.match(r"\.\. (?:auto\w+|py:\w+):: ([\w.]+)", line):
                name = found.group(1)
                names.add(name if name.startswith("wsgisession") else f"{module}.{name}")
    return names


@pytest.mark.parametrize(
    "module",
    [wsgisession, wsgisession.stores, wsgisession.testing, wsgisession.paste],
    ids=lambda module: module.__name__,
)
def test_every_public_name_is_in_the_api_reference(module: ModuleType) -> None:
    documented = _documented()
    missing = [name for name in module.__all__ if f"{module.__name__}.{name}" not in documented]

    assert not missing, f"add to docs/api.rst: {missing}"


def test_every_builtin_store_class_has_its_page() -> None:
    documented = _documented()

    for name in (
        "memory.MemoryStore",
        "file.FileStore",
        "sql.SQLStore",
        "redis.RedisStore",
        "memcached.MemcachedStore",
    ):
        assert f"wsgisession.stores.{name}" in documented


@pytest.fixture(scope="module")
def guide_store_class() -> type[Store]:
    store_class: type[Store] = _load(DOCS / "examples" / "dict_store.py").DictStore
    return store_class


class TestTheGuidesExampleStore(StoreConformance):
    """The store that ``docs/stores/writing.rst`` shows passes the whole suite."""

    @pytest.fixture
    def store(self, guide_store_class: type[Store]) -> Iterator[Store]:
        with guide_store_class.from_url("dict://") as store:
            yield store
