"""The conformance suite every store must pass, for built-in and third-party stores.

Subclass :class:`StoreConformance` in a test module and give it a ``store`` fixture
that yields a fresh, empty store, and the two fixtures that let it check what the
store promises about its backend and its options::

    import functools

    import pytest
    from wsgisession.testing import StoreConformance

    URL = "mine://localhost/test"

    @pytest.fixture
    def store():
        with MyStore.from_url(URL) as s:
            yield s

    @pytest.fixture
    def store_factory():
        return functools.partial(MyStore.from_url, URL)

    @pytest.fixture
    def unreachable_store():
        return functools.partial(MyStore.from_url, "mine://127.0.0.1:1/test")

    class TestMyStore(StoreConformance):
        pass

The class name has no ``Test`` prefix, so pytest collects it only through a subclass.
Without ``store_factory`` or ``unreachable_store``, the tests that need them are
skipped, and the reason names the fixture to provide.
"""

from __future__ import annotations

from ._backend import BackendTests
from ._hardening import HardeningTests
from ._helpers import make_record, make_tombstone, new_key
from ._locked import LockedSaveTests
from ._records import RecordTests
from ._users import UserIndexTests
from ._writes import WriteTests

__all__ = ["StoreConformance", "make_record", "make_tombstone", "new_key"]


class StoreConformance(
    RecordTests, WriteTests, LockedSaveTests, UserIndexTests, HardeningTests, BackendTests
):
    """Tests every :class:`~wsgisession.stores.Store` must pass.

    Fixtures it uses, which the test module (or a ``conftest.py``) provides:

    ``store``
        A fresh, empty store, closed after the test. Every test needs it.
    ``store_factory``
        A callable building the store under test with the store options it is given
        (``functools.partial(MyStore.from_url, url)``), to check that an option the
        store does not take is a :exc:`~wsgisession.ConfigError` naming it.
    ``unreachable_store``
        A callable without arguments building the store pointed at a backend that isn't
        there (a loopback port nobody listens on), to check that building contacts
        nothing and that every operation then raises :exc:`~wsgisession.StoreError`
        chained to the backend's exception.

    A test whose optional fixture is missing is skipped, and says which one to provide.
    Records are made already expired rather than waited for, so the suite runs the
    same on every backend and never sleeps out a timeout.
    """
