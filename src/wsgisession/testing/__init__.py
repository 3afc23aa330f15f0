"""The conformance suite every store must pass, for built-in and third-party stores.

Subclass :class:`StoreConformance` in a test module and give it a ``store`` fixture
that yields a fresh, empty store::

    import pytest
    from wsgisession.testing import StoreConformance

    @pytest.fixture
    def store():
        with MyStore.from_url("mine://localhost/test") as s:
            yield s

    class TestMyStore(StoreConformance):
        pass

The class name has no ``Test`` prefix, so pytest collects it only through a subclass.
"""

from __future__ import annotations

from ._hardening import HardeningTests
from ._helpers import make_record, make_tombstone, new_key
from ._locked import LockedSaveTests
from ._records import RecordTests
from ._users import UserIndexTests
from ._writes import WriteTests

__all__ = ["StoreConformance", "make_record", "make_tombstone", "new_key"]


class StoreConformance(RecordTests, WriteTests, LockedSaveTests, UserIndexTests, HardeningTests):
    """Tests every :class:`~wsgisession.stores.Store` must pass.

    Needs one fixture, ``store``: a fresh, empty store, closed after the test.
    Records are made already expired rather than waited for, so the suite runs the
    same on every backend and never sleeps out a timeout.
    """
