"""The cookie and the headers: what the client is sent, and what it sends back.

The behaviour is in docs/behaviour.rst, sections "The cookie", "Headers" and "Key
rotation". Hostile cookies (forged, oversized, by the dozen) are in
``test_hostile.py``; a cookie's attributes in a real browser in ``test_browser.py``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from itsdangerous import BadSignature, Signer
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from tests.helpers import (
    SECRET,
    CountingStore,
    body,
    cookie_value,
    counter,
    dump,
    get_with_cookie_header,
    id_of,
    make_client,
    read_only,
    set_cookies,
    untouched,
)
from wsgisession import Session, SessionMiddleware
from wsgisession.config import Config
from wsgisession.cookies import MAX_CHECKED, SessionCookie
from wsgisession.ids import new_session_id
from wsgisession.stores.memory import MemoryStore

# -- the cookie the client sends ------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("...", id="dots"),
        pytest.param("x" * 10_000, id="10kb"),
        pytest.param("not-signed-at-all", id="unsigned"),
        pytest.param("../../etc/passwd", id="path"),
        pytest.param("\u00e9\u00e8.\u00e0", id="non-ascii"),
    ],
)
def test_invalid_cookie_gets_a_fresh_session_without_a_store_lookup(value: str) -> None:
    store = CountingStore()
    client, _ = make_client({"/": read_only}, store=store)
    response = get_with_cookie_header(client.application, "/", f"session_id={value}")
    assert response.status_code == 200
    assert body(response) is None
    assert "load" not in store.calls


def test_tampered_signature_gets_a_fresh_session(caplog: pytest.LogCaptureFixture) -> None:
    store = CountingStore()
    client, _ = make_client({"/inc": counter}, store=store)
    client.get("/inc")
    good = cookie_value(client)
    tampered = good[:-2] + ("AA" if good[-2:] != "AA" else "BB")
    client.set_cookie("session_id", tampered)
    store.calls.clear()
    with caplog.at_level(logging.INFO, logger="wsgisession"):
        assert body(client.get("/inc")) == 1
    assert store.calls.count("load") == 0
    assert "did not verify" in caplog.text
    assert good not in caplog.text


def test_thousands_of_misshapen_cookies_write_a_bounded_number_of_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, _ = make_client({"/inc": counter})
    client.get("/inc")
    good = cookie_value(client)
    header = "; ".join(["session_id=x"] * 10_000 + [f"session_id={good}"])
    with caplog.at_level(logging.INFO, logger="wsgisession"):
        response = get_with_cookie_header(client.application, "/inc", header)
    assert body(response) == 2  # the one of our shape still found, after all of them
    assert len(caplog.records) == MAX_CHECKED + 1
    assert "ignored 9996 more session cookies" in caplog.text


def test_cookie_signed_with_another_key_is_ignored() -> None:
    client, _ = make_client({"/inc": counter})
    client.get("/inc")
    other, _ = make_client(
        {"/inc": counter}, secret_key="another-key-entirely-long-enough-to-pass"
    )
    other.set_cookie("session_id", cookie_value(client))
    assert body(other.get("/inc")) == 1


def test_first_cookie_that_verifies_is_used() -> None:
    store = MemoryStore()
    client, middleware = make_client({"/inc": counter, "/": dump}, store=store)
    client.get("/inc")
    good = cookie_value(client)
    header = f"session_id=garbage; session_id={good[:-3]}abc; session_id={good}"
    assert body(get_with_cookie_header(middleware, "/", header)) == {"n": 1}


def test_fallback_key_cookie_is_accepted_and_reissued_under_the_current_key() -> None:
    store = MemoryStore()
    old_client, _ = make_client(
        {"/inc": counter}, store=store, secret_key="the-old-key-from-before-the-rotation"
    )
    old_client.get("/inc")
    old_value = cookie_value(old_client)
    client, _ = make_client(
        {"/inc": counter, "/": untouched},
        store=store,
        secret_key="the-new-key-from-after-the-rotation",
        secret_key_fallbacks=["the-old-key-from-before-the-rotation"],
    )
    client.set_cookie("session_id", old_value)
    assert set_cookies(client.get("/")) == []  # not re-issued when the session isn't used
    response = client.get("/inc")
    assert body(response) == 2
    [header] = set_cookies(response)
    new_value = cookie_value(client)
    assert new_value != old_value
    assert id_of(new_value) == id_of(old_value)
    signer = Signer(
        "the-new-key-from-after-the-rotation",
        salt=b"wsgisession.session-id",
        key_derivation="hmac",
        digest_method=hashlib.sha256,
    )
    assert signer.unsign(new_value).decode() == id_of(old_value)
    with pytest.raises(BadSignature):
        signer.unsign(old_value)
    assert set_cookies(client.get("/inc")) == []


# -- the cookie the client is sent ----------------------------------------------------


def test_first_write_stores_the_session_and_sets_a_browser_lifetime_cookie() -> None:
    store = MemoryStore()
    client, _ = make_client({"/inc": counter}, store=store)
    response = client.get("/inc")
    [header] = set_cookies(response)
    assert header.startswith("session_id=")
    assert "HttpOnly" in header and "Path=/" in header and "SameSite=Lax" in header
    assert "Max-Age" not in header and "Expires" not in header
    assert "Secure" not in header
    assert response.headers["Cache-Control"] == 'no-cache="Set-Cookie"'
    assert store.count() == 1


def test_counter_counts_and_sets_the_cookie_once() -> None:
    client, _ = make_client({"/inc": counter})
    assert body(client.get("/inc")) == 1
    second = client.get("/inc")
    assert body(second) == 2
    assert set_cookies(second) == []
    assert "Cache-Control" not in second.headers
    assert body(client.get("/inc")) == 3


@pytest.mark.parametrize(
    ("options", "scheme", "expected", "absent"),
    [
        pytest.param({}, "https", ["Secure"], [], id="auto-secure-over-https"),
        pytest.param({}, "http", [], ["Secure"], id="auto-plain-over-http"),
        pytest.param({"cookie_secure": True}, "http", ["Secure"], [], id="forced-secure"),
        pytest.param(
            {"cookie_name": "__Host-sid"}, "http", ["Secure", "Path=/"], ["Domain"], id="host"
        ),
        pytest.param(
            {"cookie_samesite": "None"}, "https", ["SameSite=None", "Secure"], [], id="none-https"
        ),
        pytest.param({"cookie_samesite": "None"}, "http", [], ["SameSite"], id="none-http"),
        pytest.param({"cookie_samesite": None}, "https", [], ["SameSite"], id="no-samesite"),
        pytest.param({"cookie_samesite": "Strict"}, "http", ["SameSite=Strict"], [], id="strict"),
        pytest.param(
            {"cookie_partitioned": True}, "https", ["Partitioned", "Secure"], [], id="chips"
        ),
        pytest.param({"cookie_partitioned": True}, "http", [], ["Partitioned"], id="chips-http"),
        pytest.param({"cookie_httponly": False}, "http", [], ["HttpOnly"], id="no-httponly"),
        pytest.param(
            {"cookie_domain": "example.org", "cookie_path": "/app"},
            "http",
            ["Domain=example.org", "Path=/app"],
            [],
            id="domain-path",
        ),
        pytest.param({"cookie_max_age": 600}, "http", ["Max-Age=600"], [], id="max-age"),
    ],
)
def test_cookie_attributes(
    options: dict[str, Any], scheme: str, expected: list[str], absent: list[str]
) -> None:
    client, middleware = make_client({"/inc": counter}, **options)
    response = client.get("/inc", base_url=f"{scheme}://example.org/")
    [header] = set_cookies(response)
    parts = [part.strip() for part in header.split(";")]
    for attribute in expected:
        assert attribute in parts
    for attribute in absent:
        assert not any(part.startswith(attribute) for part in parts)
    assert header.startswith(middleware.config.cookie_name + "=")


# -- headers ---------------------------------------------------------------------------


def test_app_headers_are_kept_and_vary_is_extended() -> None:
    def handler(session: Session, request: Request) -> Response:
        session["x"] = 1
        response = Response("ok")
        response.headers["Vary"] = "Accept-Encoding"
        response.headers["Cache-Control"] = "private"
        response.set_cookie("theme", "dark")
        return response

    client, _ = make_client({"/": handler})
    response = client.get("/")
    assert response.headers.getlist("Vary") == ["Accept-Encoding, Cookie"]
    assert response.headers.getlist("Cache-Control") == ["private"]
    cookies = set_cookies(response)
    assert len(cookies) == 2
    assert any(c.startswith("theme=dark") for c in cookies)


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        # A shared cache kept "public" pages' Set-Cookie, for the next visitor.
        ("public, max-age=600", 'public, max-age=600, no-cache="Set-Cookie"'),
        ("max-age=60", 'max-age=60, no-cache="Set-Cookie"'),
        ("private", "private"),
        ("no-store", "no-store"),
        ("No-Cache", "No-Cache"),
        ('public, no-cache="set-cookie"', 'public, no-cache="set-cookie"'),
        (
            'public, no-cache="Authorization"',
            'public, no-cache="Authorization", no-cache="Set-Cookie"',
        ),
        # Naming other fields, they let a shared cache keep the rest, cookie included.
        ('public, private="X-Debug"', 'public, private="X-Debug", no-cache="Set-Cookie"'),
        ('no-cache="X-Set-Cookie-Hint"', 'no-cache="X-Set-Cookie-Hint", no-cache="Set-Cookie"'),
        (
            'max-age=60, no-cache="Authorization, Set-Cookie"',
            'max-age=60, no-cache="Authorization, Set-Cookie"',
        ),
        ('private="Set-Cookie"', 'private="Set-Cookie"'),
        ("", 'no-cache="Set-Cookie"'),
        # A quoted string with an escaped quote holds no directive of its own.
        ('public, ext="a\\", no-store"', 'public, ext="a\\", no-store", no-cache="Set-Cookie"'),
    ],
)
def test_a_cookie_on_a_response_a_shared_cache_may_keep_is_kept_out_of_it(
    given: str, sent: str
) -> None:
    def handler(session: Session, request: Request) -> Response:
        session["x"] = 1
        return Response("ok", headers={"Cache-Control": given})

    client, _ = make_client({"/": handler})
    response = client.get("/")
    assert "Set-Cookie" in response.headers
    assert response.headers.getlist("Cache-Control") == [sent]


def test_vary_already_naming_cookie_is_left_alone() -> None:
    def handler(session: Session, request: Request) -> Response:
        session.get("x")
        return Response("ok", headers={"Vary": "cookie"})

    client, _ = make_client({"/": handler})
    assert client.get("/").headers.getlist("Vary") == ["cookie"]


def test_a_session_first_read_after_the_headers_went_out_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It can't get ``Vary: Cookie`` any more, so a WARNING says so (docs/behaviour.rst,
    section "Headers")."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        session = environ["session"]
        if environ["PATH_INFO"] == "/login":
            session["user"] = "ann"
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"ok"
            return
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"hello "
        yield str(session.get("user")).encode()

    client = Client(
        SessionMiddleware(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    )
    client.get("/login")
    with caplog.at_level(logging.WARNING, logger="wsgisession"):
        response = client.get("/page")
        assert response.get_data(as_text=True) == "hello ann"
    assert "Vary" not in response.headers
    assert "no Vary: Cookie" in caplog.text


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {"cookie_domain": "example.org", "cookie_path": "/app", "cookie_secure": True},
            id="domain-path-secure",
        ),
        pytest.param({"cookie_samesite": "None", "cookie_partitioned": True}, id="samesite-none"),
        pytest.param({"cookie_name": "__Host-sid", "cookie_httponly": False}, id="host-prefix"),
        pytest.param({"cookie_samesite": None}, id="no-samesite"),
    ],
)
@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_a_browser_lifetime_cookie_is_what_werkzeug_renders(
    options: dict[str, Any], https: bool
) -> None:
    """set_header renders the attributes of a browser-lifetime cookie once; every header
    must still be exactly werkzeug's rendering of the signed value."""
    config = Config.from_options(None, secret_key=SECRET, store="memory://", **options)
    cookies = SessionCookie(config)
    for _ in range(3):
        session_id = new_session_id()
        expected = cookies._dump(cookies.sign(session_id), max_age=None, https=https)
        assert cookies.set_header(session_id, max_age=None, https=https) == expected


def test_the_signature_is_itsdangerous_signature() -> None:
    """Cookies stay interchangeable with itsdangerous's Signer (docs/security.rst)."""
    config = Config.from_options(None, secret_key=SECRET, store="memory://")
    signer = Signer(
        SECRET, salt=b"wsgisession.session-id", key_derivation="hmac", digest_method=hashlib.sha256
    )
    for _ in range(5):
        session_id = new_session_id()
        assert SessionCookie(config).sign(session_id) == signer.sign(session_id).decode()
