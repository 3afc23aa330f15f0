"""Private Redis Sentinel and Cluster servers for the tests (filled in by the Redis store)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def redis_sentinel_url() -> str:
    """URL of a Sentinel-managed master started for this test run."""
    pytest.fail("the Redis Sentinel fixture is not written yet")


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    """URL of a three-master Redis Cluster started for this test run."""
    pytest.fail("the Redis Cluster fixture is not written yet")
