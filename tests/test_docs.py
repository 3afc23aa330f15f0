"""The documentation stays true to the code.

The configuration reference is generated from ``config.OPTIONS`` by the extension in
``docs/_ext``; these tests fail when that generator, the prose's option references,
the API page or the store-writing guide drift from the code: both of the guide's
example stores pass the conformance suite, and what it says of entry points and the
command line holds. The build itself (``python -m sphinx -W``) runs in CI.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

import wsgisession
import wsgisession.django
import wsgisession.paste
import wsgisession.stores
import wsgisession.testing
from tests.helpers import CHILD_ENV, SECRET, finish, merging_writer_code, python_child
from wsgisession.config import OPTIONS
from wsgisession.errors import ConfigError
from wsgisession.stores import Store
from wsgisession.testing import StoreConformance, make_record, new_key

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
    [wsgisession, wsgisession.stores, wsgisession.testing, wsgisession.paste, wsgisession.django],
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


@pytest.fixture(scope="module")
def sqlite3_store_class() -> type[Store]:
    store_class: type[Store] = _load(DOCS / "examples" / "sqlite3_store.py").SQLite3Store
    return store_class


class TestTheGuidesExampleStore(StoreConformance):
    """The dict store that ``docs/stores/writing.rst`` shows passes the whole suite."""

    @pytest.fixture
    def store(self, guide_store_class: type[Store]) -> Iterator[Store]:
        with guide_store_class.from_url("dict://") as store:
            yield store

    @pytest.fixture
    def store_factory(self, guide_store_class: type[Store]) -> Callable[..., Store]:
        return functools.partial(guide_store_class.from_url, "dict://")

    # Its records live in the process: there is no backend to be out of reach.
    test_an_unreachable_backend_fails_every_operation_with_store_error = None


class TestTheGuidesSQLite3Store(StoreConformance):
    """The sqlite3 store that ``docs/stores/writing.rst`` shows passes the whole suite."""

    @pytest.fixture
    def store_factory(
        self, sqlite3_store_class: type[Store], tmp_path: Path
    ) -> Callable[..., Store]:
        return functools.partial(sqlite3_store_class.from_url, f"sqlite3:{tmp_path / 's.db'}")

    @pytest.fixture
    def store(self, store_factory: Callable[..., Store]) -> Iterator[Store]:
        with store_factory() as store:
            yield store

    @pytest.fixture
    def unreachable_store(
        self, sqlite3_store_class: type[Store], tmp_path: Path
    ) -> Callable[[], Store]:
        in_the_way = tmp_path / "a-file"
        in_the_way.write_text("where the database's directory should be")
        return functools.partial(sqlite3_store_class.from_url, f"sqlite3:{in_the_way / 's.db'}")


def test_building_the_sqlite3_store_creates_no_file(
    sqlite3_store_class: type[Store], tmp_path: Path
) -> None:
    """The guide says building contacts nothing: the first operation opens the file."""
    path = tmp_path / "sessions.db"
    with sqlite3_store_class.from_url(f"sqlite3:{path}") as store:
        assert not path.exists()
        store.ping()
        assert path.exists()


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        pytest.param("sqlite3:", {}, "must name a file", id="no-path"),
        pytest.param("sqlite:x.db", {}, "must name a file", id="other-scheme"),
        pytest.param("sqlite3:x.db", {"busy_timeout": "5"}, "'busy_timeout' must be", id="text"),
        pytest.param(
            "sqlite3:x.db", {"busy_timeout": -1}, "'busy_timeout' must be", id="negative"
        ),
    ],
)
def test_the_sqlite3_store_refuses_a_bad_url_or_option(
    sqlite3_store_class: type[Store], url: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        sqlite3_store_class.from_url(url, **options)


def test_processes_sharing_the_sqlite3_stores_file_lose_no_write(
    sqlite3_store_class: type[Store], tmp_path: Path
) -> None:
    """The guide says SQLite's own lock orders the writes of processes sharing the file."""
    opener = (
        f"sys.path.insert(0, {str(DOCS / 'examples')!r})\n"
        "from sqlite3_store import SQLite3Store\n"
        "store = SQLite3Store.from_url(sys.argv[1])"
    )
    url, key, processes, writes = f"sqlite3:{tmp_path / 's.db'}", new_key(), 4, 25
    with sqlite3_store_class.from_url(url) as store:
        assert store.save(key, make_record(b"{}"), expected_version=None)
        start = time.time() + 1
        children = [
            python_child(merging_writer_code(opener), url, key, f"p{n}", writes, start)
            for n in range(processes)
        ]
        for child in children:
            finish(child)
        loaded = store.load(key)
    assert loaded is not None
    assert json.loads(loaded.data) == {f"p{n}": writes - 1 for n in range(processes)}
    assert loaded.version == 1 + processes * writes


def test_the_command_line_opens_a_store_by_its_entry_point(tmp_path: Path) -> None:
    """As the guide says: ``wsgisession``, a process of its own, finds a store's scheme
    through an entry point of an installed distribution, never through code that calls
    ``register_store``."""
    ini = tmp_path / "app.ini"
    ini.write_text(f"[session]\nsecret_key = {SECRET}\nstore = sqlite3:{tmp_path / 's.db'}\n")
    site = tmp_path / "site"
    (site / "mystores-1.0.dist-info").mkdir(parents=True)
    (site / "mystores-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mystores\nVersion: 1.0\n"
    )
    (site / "mystores-1.0.dist-info" / "entry_points.txt").write_text(
        "[wsgisession.stores]\nsqlite3 = sqlite3_store:SQLite3Store\n"
    )
    shutil.copy(DOCS / "examples" / "sqlite3_store.py", site)

    def check(*path: Path) -> subprocess.CompletedProcess[str]:
        pythonpath = os.pathsep.join([*map(str, path), CHILD_ENV["PYTHONPATH"]])
        return subprocess.run(
            [sys.executable, "-m", "wsgisession", "check", "--config", str(ini)],
            capture_output=True,
            text=True,
            env={**CHILD_ENV, "PYTHONPATH": pythonpath},
            timeout=60,
            check=False,
        )

    unknown, found = check(), check(site)

    assert unknown.returncode == 2, unknown.stderr
    assert "unknown store scheme 'sqlite3'" in unknown.stderr
    assert found.returncode == 0, found.stderr
    # The resolved options come first (see docs/cli.rst), then the verdict.
    assert found.stdout.splitlines()[-1].startswith("ok: configuration valid, store sqlite3:")
