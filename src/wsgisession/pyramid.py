"""Pyramid helpers: make ``request.session`` the wsgisession session.

``config.include("wsgisession.pyramid")`` registers a session factory whose
sessions implement Pyramid's ``ISession`` over the request's :class:`Session`, so
code written against ``request.session`` (flash messages, CSRF tokens,
``invalidate()``, ``changed()``) works unchanged. The middleware still wraps the app:

.. code-block:: python

    from pyramid.config import Configurator
    from wsgisession import SessionMiddleware

    with Configurator() as config:
        config.include("wsgisession.pyramid")
        config.add_route("home", "/")
        config.scan()
        app = SessionMiddleware(config.make_wsgi_app(), secret_key=KEY)
"""

from __future__ import annotations

import secrets
from typing import Any, Final

from pyramid.interfaces import ISession
from zope.interface import classImplements

from ._view import SessionView
from .errors import SessionError
from .middleware import ENVIRON_KEY, get_session
from .session import Session

__all__ = ["PyramidSession", "includeme", "session_factory"]

# The key Pyramid's own cookie sessions use, so data moved between them keeps meaning.
_CSRF_KEY: Final = "_csrft_"


class PyramidSession(SessionView):
    """Pyramid's ``ISession`` over a wsgisession :class:`Session`.

    The mapping is the session's own data. :meth:`set`, :meth:`regenerate`,
    :attr:`remember` and :attr:`user_id` reach the wsgisession features Pyramid has
    no name for; :attr:`wsgi_session` is the session itself.

    :param session: The request's session.
    """

    __slots__ = ("wsgi_session",)

    def __init__(self, session: Session) -> None:
        #: The wsgisession :class:`Session` behind this one.
        self.wsgi_session = session

    def _session(self) -> Session:
        return self.wsgi_session

    def __repr__(self) -> str:
        return f"<PyramidSession over {self.wsgi_session!r}>"

    def clear(self) -> None:
        """Remove every key (the session lives on, empty)."""
        self.wsgi_session.clear()

    # -- ISession ---------------------------------------------------------------------

    @property
    def created(self) -> float:
        """When the session started, as a Unix timestamp."""
        return self.wsgi_session.created_at

    def changed(self) -> None:
        """Save the session even though only a nested value was changed in place."""
        self.wsgi_session.modified = True

    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        """Add *msg* to the flash *queue*; without *allow_duplicate*, only once.

        The queue is a category of :meth:`Session.flash`, so concurrent requests' messages
        are all kept, and each is popped once.
        """
        if allow_duplicate or msg not in self.peek_flash(queue):
            self.wsgi_session.flash(msg, category=queue)

    def pop_flash(self, queue: str = "") -> list[Any]:
        """Return the messages of *queue* and empty it."""
        return [message for _, message in self.wsgi_session.pop_flashes(queue)]

    def peek_flash(self, queue: str = "") -> list[Any]:
        """Return the messages of *queue* and leave them there."""
        return [message for _, message in self.wsgi_session.peek_flashes(queue)]

    def new_csrf_token(self) -> str:
        """Store a fresh CSRF token and return it."""
        token = secrets.token_hex(20)
        self.wsgi_session[_CSRF_KEY] = token
        return token

    def get_csrf_token(self) -> str:
        """Return the session's CSRF token, making one if it has none."""
        token: str | None = self.wsgi_session.get(_CSRF_KEY)
        return token if token is not None else self.new_csrf_token()


classImplements(PyramidSession, ISession)


def session_factory(request: Any) -> PyramidSession:
    """Pyramid session factory: the session the middleware put in *request*'s environ.

    :raises SessionError: The app is not wrapped in :class:`SessionMiddleware`, or
        *request* is a subrequest whose environ was made apart from its parent's.
    """
    try:
        return PyramidSession(get_session(request.environ))
    except SessionError as exc:
        # The app may well be wrapped: Request.blank() makes an environ of its own.
        raise SessionError(
            f"{exc}; a subrequest made with Request.blank() has an environ apart from its "
            f"parent's: make it with request.copy(), or copy the {ENVIRON_KEY!r} key of "
            "the parent's environ into it"
        ) from None


def includeme(config: Any) -> None:
    """Make ``request.session`` a :class:`PyramidSession` (``config.include`` hook)."""
    config.set_session_factory(session_factory)
