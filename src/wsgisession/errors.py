"""The exceptions wsgisession raises on purpose."""

from __future__ import annotations

__all__ = ["ConfigError", "SessionError", "StoreError"]


class SessionError(Exception):
    """Base class of every error wsgisession raises on purpose.

    Raised as itself when a session is used in a way that cannot work, such as
    starting a session or regenerating its id after the response headers were sent,
    or saving a session larger than ``max_size``.
    """


class ConfigError(SessionError, ValueError):
    """An option is missing, unknown, of the wrong type, or names an unknown store.

    Raised when the middleware or a store is built, never during a request.
    """


class StoreError(SessionError):
    """The store failed: it is down, timed out, full, or refused the operation.

    Always chained (``__cause__``) to the driver's or the operating system's error.
    """
