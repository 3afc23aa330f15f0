"""The public conformance suite, run over every store of the ``store`` fixture, and
what the suite promises the authors of other stores.

``tests/stores/conftest.py`` gives it ``store_factory`` and ``unreachable_store`` for
every store, so none of its tests is skipped here. The memory store has no backend:
its records live in the process, so nothing about it can be unreachable, and the test
that needs one runs over every other store.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import wsgisession.testing
from tests.helpers import STORE_KINDS
from wsgisession.stores import Store
from wsgisession.testing import StoreConformance

#: Every store with a backend that can be out of reach: all but memory.
BACKED_KINDS = [kind for kind in STORE_KINDS if kind != "memory"]


class TestStoreConformance(StoreConformance):
    """Runs the whole suite over every store."""

    @pytest.mark.parametrize("store_kind", BACKED_KINDS)
    def test_an_unreachable_backend_fails_every_operation_with_store_error(
        self, store: Store, request: pytest.FixtureRequest
    ) -> None:
        super().test_an_unreachable_backend_fails_every_operation_with_store_error(store, request)


def test_every_assertion_of_the_suite_says_what_the_store_did_wrong() -> None:
    """A bare ``AssertionError`` tells a store's author nothing: each assert has a message."""
    package = Path(wsgisession.testing.__file__).parent
    bare = [
        f"{path.name}:{node.lineno}"
        for path in sorted(package.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Assert) and node.msg is None
    ]

    assert not bare, f"assertions without a message in wsgisession.testing: {bare}"


# -- what a store's author sees ------------------------------------------------------------

_CARELESS = '''
import functools

import pytest

from wsgisession.stores.memory import MemoryStore
from wsgisession.testing import StoreConformance


class CarelessStore(MemoryStore):
    """Breaks the contract on purpose: it takes any option, and its load() lets the
    backend's error out when "careless://down" names a backend that isn't there."""

    def __init__(self, up):
        super().__init__()
        self.up = up

    @classmethod
    def from_url(cls, url, **options):
        return cls(up=url == "careless://up")

    def load(self, key):
        if not self.up:
            raise ConnectionRefusedError("nobody listens")
        return super().load(key)


@pytest.fixture
def store():
    with CarelessStore.from_url("careless://up") as s:
        yield s
'''

_FIXTURES = """

@pytest.fixture
def store_factory():
    return functools.partial(CarelessStore.from_url, "careless://up")


@pytest.fixture
def unreachable_store():
    return functools.partial(CarelessStore.from_url, "careless://down")
"""

_SUITE = """

class TestCarelessStore(StoreConformance):
    pass
"""

#: The tests that need the optional fixtures, with the skip reasons shown.
_SELECT = ["-p", "no:cacheprovider", "-rs", "-k", "unreachable or option_the_store"]


def test_a_fixture_left_out_skips_its_test_naming_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_careless=_CARELESS + _SUITE)

    result = pytester.runpytest_inprocess(*_SELECT)

    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*no 'unreachable_store' fixture: provide one to check that building the store*",
            "*no 'store_factory' fixture: provide one to check that the store refuses an option*",
        ],
        consecutive=False,
    )


def test_a_store_breaking_the_contract_fails_saying_how(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_careless=_CARELESS + _FIXTURES + _SUITE)

    result = pytester.runpytest_inprocess(*_SELECT)

    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*with the backend unreachable:*",
            "*- load() raised ConnectionRefusedError: nobody listens, not StoreError*",
            "*- save() creating returned True instead of raising StoreError*",
            "*(no_such_option=1) succeeded: raise ConfigError naming the option*",
        ],
        consecutive=False,
    )
