"""Reading the signed session cookie from a request, and writing it to a response."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import logging
import re
from typing import Final, NamedTuple

from itsdangerous import Signer
from werkzeug.http import dump_cookie

from .config import Config
from .ids import ID_PATTERN

__all__ = ["MAX_CHECKED", "CookieId", "SessionCookie"]

log = logging.getLogger("wsgisession")

_SALT: Final = b"wsgisession.session-id"
# The exact shape of a cookie we mint: a 43-character id, a dot, a 43-character
# HMAC-SHA256 signature, both URL-safe base64. Anything else is refused before any
# HMAC is computed, so a request can't make us spend HMAC time on its garbage.
_SHAPE: Final = re.compile(rf"{ID_PATTERN}\.[A-Za-z0-9_-]{{43}}")
#: How many cookies of our name a request may have checked; browsers send one per
#: matching path, never dozens, so the rest are ignored unverified.
MAX_CHECKED: Final = 4
#: SHA-256's block size, which HMAC pads its key to.
_BLOCK: Final = 64
# Standard base64 to its URL-safe alphabet, as base64.urlsafe_b64encode does it.
_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
# A signature's length in base64 without the padding: 32 bytes make 43 characters.
_SIGNATURE: Final = 43
# A value of our cookie's shape, in which no character needs quoting: what a cached
# Set-Cookie header is rendered with, then replaced by the real value.
_PLACEHOLDER: Final = "v" * (43 + 1 + _SIGNATURE)


class CookieId(NamedTuple):
    """A session id read from a verified cookie."""

    session_id: str
    #: True when only a ``secret_key_fallbacks`` key verified it, so it must be
    #: re-issued under the current key.
    stale_key: bool


class _Key:
    """One secret key, signing values exactly as itsdangerous's :class:`Signer` does.

    The signature is ``value.base64url(HMAC-SHA256(derived key, value))``, the
    derived key being ``HMAC-SHA256(secret, salt)``. itsdangerous derives that key
    and sets up a new HMAC on every call. Here the key is derived once, and so are
    the two SHA-256 states HMAC starts from (RFC 2104: the key XOR ipad, and XOR
    opad): each signature copies them, which makes a cookie check about five times
    cheaper. Cookies stay interchangeable with itsdangerous's.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: str | bytes) -> None:
        signer = Signer(secret, salt=_SALT, key_derivation="hmac", digest_method=hashlib.sha256)
        # The derived key is a SHA-256 digest, shorter than the 64-byte block, so
        # RFC 2104 pads it with zeros rather than hashing it.
        key = signer.derive_key().ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))

    def signature(self, value: bytes) -> bytes:
        """Return the base64url signature (unpadded) of *value*."""
        inner = self._inner.copy()
        inner.update(value)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return binascii.b2a_base64(outer.digest(), newline=False)[:_SIGNATURE].translate(_URLSAFE)


def _starts_cookie(header: str, at: int) -> bool:
    """Whether a cookie name starts at *at*: after ``;`` or the start, spaces aside."""
    before = header[:at].rstrip(" \t")
    return not before or before[-1] == ";"


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _rejected(value: str, reason: str) -> None:
    # Never any part of the value: after a key rotation without a fallback, a rejected
    # cookie still carries a live session id.
    log.info(
        "ignored a session cookie of %d characters that did not verify: %s", len(value), reason
    )


class SessionCookie:
    """Sign, verify and format the session cookie for one :class:`Config`."""

    def __init__(self, config: Config) -> None:
        self.name = config.cookie_name
        self._prefix = self.name + "="
        self._config = config
        keys = (config.secret_key, *config.secret_key_fallbacks)
        self._keys = [_Key(key) for key in keys]
        # A browser-lifetime cookie's attributes are the same on every response (an
        # expiring one's are not: Expires is the time of the response), so werkzeug
        # renders them once per scheme; set_header puts each value in.
        self._lifetime_headers = [
            self._dump(_PLACEHOLDER, max_age=None, https=https).split(_PLACEHOLDER)
            for https in (False, True)
        ]

    def read(self, cookie_header: str) -> CookieId | None:
        """Return the id of the first cookie of our name that verifies, or ``None``.

        Browsers send one cookie per matching path, so several may share the name;
        only values of our cookie's exact shape are verified, and at most the first
        :data:`MAX_CHECKED` of them, so a request's cost is bounded whatever its size.
        Rejected values are logged by their length and the reason, never their content;
        past the first :data:`MAX_CHECKED` not of our shape, one line counts the rest.
        """
        values = self._values(cookie_header)
        checked = misshapen = 0
        found = None
        for value in values:
            if not _SHAPE.fullmatch(value):
                misshapen += 1
                # A line for each would let one header write thousands of them.
                if misshapen <= MAX_CHECKED:
                    _rejected(value, "not of our shape")
                continue
            if checked == MAX_CHECKED:
                _rejected(value, f"beyond the first {MAX_CHECKED} checked")
                break
            checked += 1
            found = self._verify(value)
            if found is not None:
                break
            _rejected(value, "signed with no key we hold")
        if misshapen > MAX_CHECKED:
            log.info(
                "ignored %d more session cookies that were not of our shape",
                misshapen - MAX_CHECKED,
            )
        return found

    def _values(self, cookie_header: str) -> list[str]:
        # Only our cookie's values matter, so a plain split is enough; it also never
        # fails on bytes that are not UTF-8, which werkzeug's parse_cookie rejects.
        prefix = self._prefix
        at = cookie_header.find(prefix)
        if at < 0:
            return []
        if cookie_header.find(prefix, at + 1) < 0 and _starts_cookie(cookie_header, at):
            # The usual header holds our name once: cut its value out, no split.
            end = cookie_header.find(";", at)
            value = cookie_header[at + len(prefix) : None if end < 0 else end].strip()
            return [_unquote(value) if value[:1] == '"' else value]
        values = []
        for part in cookie_header.split(";"):
            part = part.strip()
            if part.startswith(prefix):
                values.append(_unquote(part[len(prefix) :].strip()))
        return values

    def _verify(self, value: str) -> CookieId | None:
        # The value has our shape: ASCII, one dot between two 43-character parts.
        session_id, _, signature = value.partition(".")
        payload, expected = session_id.encode("ascii"), signature.encode("ascii")
        for index, key in enumerate(self._keys):
            if not hmac.compare_digest(key.signature(payload), expected):
                continue
            # Positional: a named tuple built from keywords costs twice as much.
            return CookieId(session_id, index > 0)
        return None

    def sign(self, session_id: str) -> str:
        """Return the cookie value for *session_id*, signed with the current key."""
        payload = session_id.encode("ascii")
        return f"{session_id}.{self._keys[0].signature(payload).decode('ascii')}"

    def set_header(self, session_id: str, *, max_age: int | None, https: bool) -> str:
        """Return a ``Set-Cookie`` value carrying *session_id*.

        ``max_age=None`` makes a browser-lifetime cookie.
        """
        if max_age is None:
            parts = self._lifetime_headers[https]
            if len(parts) == 2:  # the placeholder is nowhere else in the header
                return parts[0] + self.sign(session_id) + parts[1]
        return self._dump(self.sign(session_id), max_age=max_age, https=https)

    def expire_header(self, *, https: bool) -> str:
        """Return a ``Set-Cookie`` value that makes the browser drop the cookie."""
        return self._dump("", max_age=0, https=https)

    def _dump(self, value: str, *, max_age: int | None, https: bool) -> str:
        config = self._config
        if config.cookie_secure is None:
            secure = https or config.secure_prefix
        else:
            secure = config.cookie_secure
        samesite = config.cookie_samesite
        partitioned = config.cookie_partitioned
        if not secure:
            # Browsers reject SameSite=None and Partitioned without Secure; over
            # plain http (development) the cookie goes out with their default.
            partitioned = False
            if samesite == "None":
                samesite = None
        return dump_cookie(
            self.name,
            value,
            max_age=max_age,
            path=config.cookie_path,
            domain=config.cookie_domain,
            secure=secure,
            httponly=config.cookie_httponly,
            samesite=samesite,
            partitioned=partitioned,
        )
