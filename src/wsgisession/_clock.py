"""The application's clock, in one place so tests can move it."""

from __future__ import annotations

import time


def now() -> float:
    """Return the current Unix time; every expiry decision of the middleware uses it."""
    return time.time()
