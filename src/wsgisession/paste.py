"""PasteDeploy support: the filter factory behind ``use = egg:wsgisession``.

.. code-block:: ini

    [app:main]
    use = egg:myapp
    filter-with = session

    [filter:session]
    use = egg:wsgisession
    secret_key = a long random string
    store = file:%(here)s/sessions

The package declares this factory in the entry-point group ``paste.filter_factory``
under the name ``main``, which is what ``egg:wsgisession`` looks up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ._option_sources import read_text
from .config import config_from
from .middleware import SessionMiddleware

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

__all__ = ["filter_factory"]


def filter_factory(
    global_conf: Mapping[str, str], **local_conf: str
) -> Callable[[WSGIApplication], SessionMiddleware]:
    """Return a filter that wraps an application in :class:`SessionMiddleware`.

    The keys of the filter's own section are the options, their values written as
    in an ini file: ``store.NAME`` keys go to ``store_options``, and PasteDeploy has
    already replaced ``%(here)s``. ``[DEFAULT]`` values (*global_conf*) are not
    options and are not read. The options are checked here, while PasteDeploy loads
    the file, so a bad one stops the application from starting.

    :param global_conf: PasteDeploy's global configuration; only the file's name
        (``__file__``) is read, for errors to name it.
    :param local_conf: The filter section's keys and values.
    :raises ConfigError: An option is missing, unknown or does not parse.
    """
    path = global_conf.get("__file__")
    where = "the egg:wsgisession filter" + (f" of {path}" if path else "")
    config = config_from(read_text(local_conf, where))

    def make_filter(app: WSGIApplication) -> SessionMiddleware:
        return SessionMiddleware(app, config)

    return make_filter
