"""How the file store reports a failure of the disk: its file names, keys hidden."""

from __future__ import annotations

import re
from typing import Final

from ._file_tree import Unsafe
from .base import translate_errors

__all__ = ["FileErrors"]


#: A store key inside a file name or message, of which no more than 8 digits are shown.
_KEY_IN_TEXT: Final = re.compile(r"([0-9a-f]{8})[0-9a-f]{56}")


def _redacted(name: object) -> object:
    return _KEY_IN_TEXT.sub(r"\1…", name) if isinstance(name, str) else name


class FileErrors(translate_errors):
    """:class:`~wsgisession.stores.base.translate_errors` for :exc:`OSError`, hiding keys.

    A file name in the message (and in the chained error, which a logged traceback
    shows) keeps only the first 8 digits of a key, and a refusal (:exc:`Unsafe`) says
    just what it refused.
    """

    __slots__ = ()

    def __init__(self, what: str) -> None:
        super().__init__(what, OSError)

    def describe(self, exc: BaseException) -> str:
        """The refusal as it is; any other error with its file names redacted."""
        if isinstance(exc, Unsafe):
            return str(exc)
        if isinstance(exc, OSError):
            # Assigning None, even back, makes str() print "None -> None".
            if exc.filename is not None:
                exc.filename = _redacted(exc.filename)
            if exc.filename2 is not None:
                exc.filename2 = _redacted(exc.filename2)
        return super().describe(exc)
