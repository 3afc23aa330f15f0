"""Fixtures for every test: the ``store`` fixture over every store, and the clock.

Server URLs default to the loopback services of the development machine and can be
moved with ``WSGISESSION_TEST_POSTGRESQL_URL``, ``WSGISESSION_TEST_MARIADB_URL``,
``WSGISESSION_TEST_REDIS_URL`` and ``WSGISESSION_TEST_MEMCACHED_URL`` (see
:mod:`tests.memcached_servers`). A server that cannot be reached skips its tests with
the masked URL as the reason, unless ``WSGISESSION_REQUIRE_SERVICES=1``, which turns
the skip into a failure (CI sets it).

Only fixtures live here, built from :mod:`tests.helpers`, which is what tests import.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import STORE_KINDS, FakeClock, open_test_store
from wsgisession.stores import Store

# pytester runs the conformance suite over stores made to break it (tests/stores).
pytest_plugins = ["tests.redis_servers", "tests.memcached_servers", "pytester"]


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """The name of the store under test, one per parameter."""
    kind: str = request.param
    return kind


@pytest.fixture
def store(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store of every kind in turn."""
    yield from open_test_store(store_kind, request, tmp_path)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Move the middleware's clock with ``clock.advance(seconds)``."""
    fake = FakeClock()
    monkeypatch.setattr("wsgisession._clock.now", fake)
    return fake
