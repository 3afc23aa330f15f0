"""The public conformance suite, run over every store of the ``store`` fixture."""

from wsgisession.testing import StoreConformance


class TestStoreConformance(StoreConformance):
    """Runs the whole suite over every store."""
