"""Server-side sessions for any WSGI application.

Wrap an application in :class:`SessionMiddleware` and its handlers find a
dict-like :class:`Session` at ``environ["session"]``. The cookie carries only a
signed session id; the data lives in a store chosen by URL.
"""

from .errors import ConfigError, SessionError, StoreError
from .middleware import SessionMiddleware, get_session
from .session import Session

__all__ = [
    "ConfigError",
    "Session",
    "SessionError",
    "SessionMiddleware",
    "StoreError",
    "get_session",
]
