"""The store registry: built-in schemes, registered factories and entry points.

Each test gets its own empty ``_registered`` dict and a fresh entry-point cache, so
nothing a test registers leaks into the next one.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import wsgisession.stores as registry
from wsgisession import ConfigError
from wsgisession.stores import Store, known_schemes, open_store, register_store
from wsgisession.stores._extras import install_hint
from wsgisession.stores.file import FileStore
from wsgisession.stores.memory import MemoryStore

_PLUGIN = '''
from wsgisession.stores.memory import MemoryStore


class PluginStore(MemoryStore):
    """A third-party store, as a plugin package would ship it."""

    @classmethod
    def from_url(cls, url, **options):
        store = cls()
        store.url = url
        store.options = options
        return store


def make_store(url, **options):
    return PluginStore.from_url(url, **options)
'''


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give each test an empty registry and an entry-point cache that is not loaded yet."""
    monkeypatch.setattr(registry, "_registered", {})
    monkeypatch.setattr(registry, "_entry_points", None)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A real module on ``sys.path`` holding a store class and a factory function."""
    name = f"wsgisession_test_plugin_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(_PLUGIN, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


def _entry_points(monkeypatch: pytest.MonkeyPatch, **values: str) -> list[str | None]:
    """Make ``name=value`` the entry points of ``wsgisession.stores``; return the lookups."""
    calls: list[str | None] = []

    def fake(*, group: str | None = None) -> list[EntryPoint]:
        calls.append(group)
        return [
            EntryPoint(name=name, value=value, group="wsgisession.stores")
            for name, value in values.items()
            if group == "wsgisession.stores"
        ]

    monkeypatch.setattr(registry, "entry_points", fake)
    return calls


class _Recorder:
    """A factory that builds a MemoryStore and remembers what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, url: str, **options: Any) -> Store:
        self.calls.append((url, options))
        return MemoryStore()


# -- register_store ------------------------------------------------------------------------


def test_registered_scheme_opens_with_url_and_options() -> None:
    factory = _Recorder()
    register_store("custom", factory)

    store = open_store("custom://host/db", colour="red")

    assert isinstance(store, MemoryStore)
    assert factory.calls == [("custom://host/db", {"colour": "red"})]


def test_an_option_the_factory_cannot_take_is_a_config_error() -> None:
    def factory(url: str, *, colour: str = "blue") -> Store:
        return MemoryStore()

    register_store("custom", factory)

    with pytest.raises(ConfigError, match=r"'custom' does not take .*'size'"):
        open_store("custom://", size=3)
    assert isinstance(open_store("custom://", colour="red"), MemoryStore)


def test_a_type_error_inside_a_factory_is_not_mistaken_for_a_bad_option() -> None:
    def factory(url: str, **options: Any) -> Store:
        raise TypeError("a bug in the factory")

    register_store("custom", factory)

    with pytest.raises(TypeError, match="a bug in the factory"):
        open_store("custom://", colour="red")


def test_scheme_is_case_insensitive() -> None:
    factory = _Recorder()
    register_store("Custom", factory)

    open_store("CUSTOM://x")

    assert factory.calls == [("CUSTOM://x", {})]


def test_registering_a_taken_custom_scheme_is_refused() -> None:
    register_store("custom", _Recorder())

    with pytest.raises(ConfigError, match="'custom'.*replace=True"):
        register_store("custom", _Recorder())


@pytest.mark.parametrize("scheme", ["file", "memory", "redis", "sqlite", "FILE"])
def test_registering_a_built_in_scheme_is_refused(scheme: str) -> None:
    with pytest.raises(ConfigError, match="replace=True"):
        register_store(scheme, _Recorder())


def test_replace_true_takes_over_a_custom_scheme() -> None:
    first, second = _Recorder(), _Recorder()
    register_store("custom", first)

    register_store("custom", second, replace=True)
    open_store("custom://")

    assert (first.calls, len(second.calls)) == ([], 1)


def test_replace_true_takes_over_a_built_in_scheme(tmp_path: Path) -> None:
    factory = _Recorder()
    register_store("file", factory, replace=True)

    store = open_store(f"file:{tmp_path}")

    assert isinstance(store, MemoryStore)
    assert factory.calls == [(f"file:{tmp_path}", {})]


def test_registry_is_clean_again_after_a_test_registered() -> None:
    """The autouse fixture's promise, checked: built-ins serve again, nothing is left."""
    assert registry._registered == {}
    assert isinstance(open_store("memory://"), MemoryStore)


# -- lookup ---------------------------------------------------------------------------------


def test_exact_scheme_wins_over_the_part_before_plus() -> None:
    base, exact = _Recorder(), _Recorder()
    register_store("mem", base)
    register_store("mem+extra", exact)

    open_store("mem+extra://x")

    assert (len(base.calls), len(exact.calls)) == (0, 1)


def test_scheme_with_plus_falls_back_to_the_part_before_it() -> None:
    """As ``postgresql+psycopg`` is served by ``postgresql``; the URL is passed whole."""
    factory = _Recorder()
    register_store("mem", factory)

    open_store("mem+extra://x")

    assert factory.calls == [("mem+extra://x", {})]


def test_built_in_scheme_with_a_driver_suffix_falls_back(tmp_path: Path) -> None:
    store = open_store(f"sqlite+pysqlite:///{tmp_path / 'x.db'}")

    assert type(store).__name__ == "SQLStore"
    store.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("memory://", MemoryStore, id="memory"),
        pytest.param("file:./sessions", FileStore, id="file-relative"),
        pytest.param("file:///tmp/sessions", FileStore, id="file-url"),
    ],
)
def test_built_in_schemes_open_their_store(url: str, expected: type[Store]) -> None:
    with open_store(url) as store:
        assert type(store) is expected


def test_unknown_scheme_lists_the_known_ones() -> None:
    register_store("custom", _Recorder())

    with pytest.raises(ConfigError, match="unknown store scheme 'mongo'") as caught:
        open_store("mongo://localhost/sessions")

    known = str(caught.value).partition("known: ")[2].split(", ")
    assert known == known_schemes()
    assert {"custom", "file", "memory", "redis", "sqlite"} <= set(known)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("sessions", id="bare-word"),
        pytest.param("./sessions", id="path"),
        pytest.param(":memory", id="empty-scheme"),
        pytest.param("", id="empty"),
    ],
)
def test_url_without_a_scheme_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="not a URL"):
        open_store(url)


def test_factory_returning_something_else_than_a_store_is_refused() -> None:
    register_store("odd", lambda url, **options: {"not": "a store"})  # type: ignore[arg-type]

    with pytest.raises(ConfigError, match="'odd'.*dict, not a Store"):
        open_store("odd://")


# -- entry points -------------------------------------------------------------------------


def test_entry_point_naming_a_store_class_serves_its_scheme(
    plugin: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    _entry_points(monkeypatch, ep=f"{plugin.__name__}:PluginStore")

    store = open_store("ep://somewhere", depth=2)

    assert isinstance(store, plugin.PluginStore)
    assert (store.url, store.options) == ("ep://somewhere", {"depth": 2})


def test_entry_point_naming_a_factory_serves_its_scheme(
    plugin: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    _entry_points(monkeypatch, ep=f"{plugin.__name__}:make_store")

    store = open_store("ep://elsewhere", depth=3)

    assert isinstance(store, plugin.PluginStore)
    assert (store.url, store.options) == ("ep://elsewhere", {"depth": 3})


def test_entry_point_scheme_with_plus_falls_back(
    plugin: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    _entry_points(monkeypatch, ep=f"{plugin.__name__}:PluginStore")

    store = open_store("ep+tls://x")

    assert isinstance(store, plugin.PluginStore)
    assert store.url == "ep+tls://x"


def test_entry_points_are_read_once_and_only_for_a_scheme_not_built_in(
    plugin: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _entry_points(monkeypatch, ep=f"{plugin.__name__}:PluginStore")

    open_store("memory://")
    assert calls == []

    open_store("ep://")
    open_store("ep://")
    assert calls == ["wsgisession.stores"]


def test_registered_scheme_wins_over_an_entry_point(
    plugin: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    _entry_points(monkeypatch, ep=f"{plugin.__name__}:PluginStore")
    factory = _Recorder()
    register_store("ep", factory)

    store = open_store("ep://")

    assert not isinstance(store, plugin.PluginStore)
    assert len(factory.calls) == 1


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("no_such_module_wsgisession_xyz:Store", id="missing-module"),
        pytest.param("{plugin}:NoSuchStore", id="missing-attribute"),
    ],
)
def test_broken_entry_point_fails_only_when_its_scheme_is_used(
    value: str, plugin: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken plugin must not break applications that never use its scheme."""
    _entry_points(monkeypatch, broken=value.replace("{plugin}", plugin.__name__))

    assert "broken" in known_schemes()
    assert isinstance(open_store("memory://"), MemoryStore)
    with pytest.raises(ConfigError, match="'broken'.*cannot be loaded"):
        open_store("broken://")


def test_known_schemes_lists_built_ins_registered_and_entry_points(
    plugin: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    _entry_points(monkeypatch, ep=f"{plugin.__name__}:PluginStore")
    register_store("custom", _Recorder())

    schemes = known_schemes()

    assert schemes == sorted(schemes)
    assert {*registry._BUILTIN, "custom", "ep"} == set(schemes)


# -- missing drivers -------------------------------------------------------------------------


@pytest.fixture
def hide_module(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make ``import NAME`` fail, and forget the store modules that need it.

    ``monkeypatch`` puts every ``sys.modules`` entry back afterwards, so later tests
    see the real driver and the already-imported store module again.
    """

    def hide(driver: str) -> None:
        monkeypatch.setitem(sys.modules, driver, None)
        for module in ("wsgisession.stores.redis", "wsgisession.stores.sql"):
            monkeypatch.delitem(sys.modules, module, raising=False)

    return hide


@pytest.mark.parametrize(
    ("driver", "url", "extra"),
    [
        pytest.param("redis", "redis://localhost/0", "redis", id="redis"),
        pytest.param("redis", "rediss://localhost/0", "redis", id="rediss"),
        pytest.param("redis", "redis+sentinel://localhost/mymaster/0", "redis", id="sentinel"),
        pytest.param("redis", "unix:///run/redis.sock", "redis", id="unix"),
        pytest.param("sqlalchemy", "sqlite:///x.db", "sql", id="sqlite"),
        pytest.param("sqlalchemy", "postgresql+psycopg://h/db", "postgres", id="postgresql"),
        pytest.param("sqlalchemy", "mysql+pymysql://h/db", "mysql", id="mysql"),
        pytest.param("sqlalchemy", "mariadb+pymysql://h/db", "mysql", id="mariadb"),
    ],
)
def test_missing_driver_names_the_extra_to_install(
    driver: str, url: str, extra: str, hide_module: Callable[[str], None]
) -> None:
    hide_module(driver)

    with pytest.raises(ConfigError) as caught:
        open_store(url)

    # By package: this project is not on the index, where its name is another's.
    assert f"pip install {install_hint(extra)[len('pip install ') :]}" in str(caught.value)
    assert "wsgisession[" not in str(caught.value)
    assert isinstance(caught.value.__cause__, ImportError)


def test_driver_is_found_again_after_a_test_hid_it() -> None:
    with open_store("redis://127.0.0.1:1/0") as store:
        assert type(store).__name__ == "RedisStore"
