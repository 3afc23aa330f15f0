"""Limits and hardening: bounded work per request, bounded configuration, weak keys
flagged, secrets kept out of sight.

The behaviour is in docs/behaviour.rst, section "Limits and hardening": what a flood of
bad cookies, a careless operator or a local user can't push the middleware into. The
rules for user ids are in ``test_users.py``; hostile cookies and records in
``test_hostile.py``; the file store's directory in ``stores/test_file_ownership.py``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
from werkzeug.wrappers import Request

from tests.helpers import (
    SECRET,
    cookie_value,
    dump,
    get_with_cookie_header,
    key_of,
    make_client,
    put,
)
from wsgisession import ConfigError, Session, SessionError, SessionMiddleware
from wsgisession.config import Config
from wsgisession.ids import new_session_id
from wsgisession.stores import Store
from wsgisession.stores.base import mask_url

TEN_YEARS = 315_360_000


def timed(session: Session, request: Request) -> str:
    for n in range(int(request.args["n"])):
        session.set(f"k{n}", 1, timeout=60)
    return "ok"


def link(session: Session, request: Request) -> str:
    session.user_id = request.args["user"]
    return "ok"


ROUTES = {"/put": put, "/timed": timed, "/link": link, "/peek": dump}


# -- bounded work per request -------------------------------------------------------


class _CountingHMAC:
    """Counts the signatures the cookie reader computes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import wsgisession.cookies as cookies

        self.calls = 0
        real = cookies._Key.signature

        def counting(key: Any, value: bytes) -> bytes:
            self.calls += 1
            return real(key, value)

        monkeypatch.setattr(cookies._Key, "signature", counting)


def _well_shaped(n: int) -> str:
    """A cookie value of our exact shape that no key signed."""
    return f"{new_session_id()}.{'A' * 42}{'BCDEFGHIJK'[n % 10]}"


def _counting_hmacs(
    monkeypatch: pytest.MonkeyPatch, fallbacks: int
) -> tuple[SessionMiddleware, _CountingHMAC]:
    """A middleware with *fallbacks* old keys, and the count of the HMACs it computes."""
    keys = [f"an-older-key-number-{n}-long-enough-to-pass" for n in range(fallbacks)]
    _, middleware = make_client(ROUTES, secret_key_fallbacks=keys)
    return middleware, _CountingHMAC(monkeypatch)


@pytest.mark.parametrize("fallbacks", [0, 5])
def test_a_flood_of_misshapen_cookies_costs_no_hmac(
    monkeypatch: pytest.MonkeyPatch, fallbacks: int
) -> None:
    """64 KiB of ``session_id=.;`` used to cost 19 ms with one key, 70 ms with five more."""
    middleware, counter = _counting_hmacs(monkeypatch, fallbacks)
    header = "session_id=.;" * (64 * 1024 // 13)
    response = get_with_cookie_header(middleware, "/peek", header)
    assert response.status_code == 200
    assert counter.calls == 0


@pytest.mark.parametrize("fallbacks", [0, 5])
def test_at_most_four_well_shaped_cookies_are_verified(
    monkeypatch: pytest.MonkeyPatch, fallbacks: int
) -> None:
    middleware, counter = _counting_hmacs(monkeypatch, fallbacks)
    header = "; ".join(f"session_id={_well_shaped(n)}" for n in range(1000))
    assert get_with_cookie_header(middleware, "/peek", header).status_code == 200
    assert counter.calls == 4 * (1 + fallbacks)


def test_a_valid_cookie_behind_misshapen_ones_is_still_found() -> None:
    client, middleware = make_client(ROUTES)
    client.get("/put?key=a&value=1")
    value = cookie_value(client)
    header = "; ".join(["session_id=." for _ in range(50)] + [f"session_id={value}"])
    response = get_with_cookie_header(middleware, "/put?key=b&value=2", header)
    assert response.status_code == 200
    assert response.headers.get("Set-Cookie") is None  # the same session, found


def test_a_rejected_cookie_is_logged_by_length_and_reason_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a key rotation without a fallback, a rejected cookie is a live session id."""
    _, middleware = make_client(ROUTES)
    value = _well_shaped(0)
    with caplog.at_level(logging.INFO, logger="wsgisession"):
        get_with_cookie_header(middleware, "/put?key=a&value=1", f"session_id={value}")
        get_with_cookie_header(middleware, "/put?key=a&value=1", "session_id=abcdefghijkl")
    assert "did not verify" in caplog.text and "12 characters" in caplog.text
    for secret in (value[:6], value.split(".")[1][:6], "abcdef"):
        assert secret not in caplog.text


def test_max_size_counts_key_deadlines_too(store: Store) -> None:
    """84 KB of data and 201 KB of per-key deadlines once fit under max_size=100000."""
    client, _ = make_client(ROUTES, store=store, max_size=10_000)
    client.get("/put?key=a&value=1")
    key = key_of(client)
    before = store.load(key)
    with pytest.raises(SessionError, match=r"bytes stored .*over max_size 10000"):
        client.get("/timed?n=1000")  # little data, a lot of deadlines
    assert store.load(key) == before


# -- bounded configuration ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("timeout", 10**400, id="timeout-huge"),
        pytest.param("timeout", TEN_YEARS + 1, id="timeout"),
        pytest.param("remember_me_timeout", 10**17, id="remember-redis-range"),
        pytest.param("absolute_timeout", TEN_YEARS + 1, id="absolute"),
        pytest.param("cleanup_interval", TEN_YEARS + 1, id="cleanup"),
        pytest.param("cookie_max_age", TEN_YEARS + 1, id="max-age"),
        pytest.param("regenerate_grace", TEN_YEARS + 1, id="grace"),
        pytest.param("save_timeout", TEN_YEARS + 1, id="save-timeout"),
    ],
)
def test_durations_over_ten_years_are_refused_at_startup(name: str, value: int) -> None:
    with pytest.raises(ConfigError, match=rf"option '{name}' must be at most {TEN_YEARS}"):
        Config.from_options(secret_key=SECRET, **{name: value})


def test_ten_years_exactly_is_accepted_and_works_on_every_store(store: Store) -> None:
    client, _ = make_client(ROUTES, store=store, remember_me_timeout=TEN_YEARS)
    assert client.get("/put?key=a&value=1").status_code == 200


def test_a_duration_from_an_ini_file_is_capped_too(tmp_path: Path) -> None:
    path = tmp_path / "app.ini"
    path.write_text(f"[session]\nsecret_key = {SECRET}\ntimeout = {'9' * 500}\n")
    with pytest.raises(ConfigError, match="option 'timeout' must be at most"):
        Config.from_ini(path)


def test_secret_lists_in_ini_files_are_one_per_line(tmp_path: Path) -> None:
    """An old key holding commas used to become several short keys, each accepted."""
    old = "an,old,key,with,commas,that,is,long,enough"
    path = tmp_path / "app.ini"
    path.write_text(f"[session]\nsecret_key = {SECRET}\nsecret_key_fallbacks = {old}\n")
    assert Config.from_ini(path).secret_key_fallbacks == (old,)
    path.write_text(
        f"[session]\nsecret_key = {SECRET}\nsecret_key_fallbacks =\n    {old}\n    {SECRET}x\n"
    )
    assert Config.from_ini(path).secret_key_fallbacks == (old, SECRET + "x")


def test_secret_lists_in_the_environment_are_one_per_line() -> None:
    old = "an,old,key,with,commas,that,is,long,enough"
    config = Config.from_env(
        environ={"WSGISESSION_SECRET_KEY": SECRET, "WSGISESSION_SECRET_KEY_FALLBACKS": old}
    )
    assert config.secret_key_fallbacks == (old,)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        pytest.param({"secret_key": "change-me"}, "placeholder", id="spec-example"),
        pytest.param({"secret_key": "a long random string"}, "placeholder", id="readme"),
        pytest.param(
            {"secret_key": "(a key of 32 random bytes, as above)"}, "placeholder", id="our-readme"
        ),
        pytest.param(
            {
                "secret_key": '(32 random bytes: python -c "import secrets; '
                'print(secrets.token_urlsafe(32))")'
            },
            "placeholder",
            id="our-configuration-page",
        ),
        pytest.param({"secret_key": "short-but-not-empty"}, "shorter than 32", id="short"),
        pytest.param({"secret_key": b"\x01" * 16}, "shorter than 32", id="short-bytes"),
        pytest.param({"secret_key": "ab" * 20}, "repeats", id="repetitive"),
        pytest.param(
            {"secret_key": SECRET, "secret_key_fallbacks": ["old"]},
            "shorter than 32",
            id="fallback",
        ),
    ],
)
def test_weak_keys_are_flagged_by_name_never_by_value(
    options: dict[str, Any], reason: str
) -> None:
    with pytest.warns(UserWarning, match=reason) as caught:
        SessionMiddleware(lambda e, s: [], **options, store="memory://")
    [warning] = caught
    text = str(warning.message)
    name = "secret_key_fallbacks" if "secret_key_fallbacks" in options else "secret_key"
    assert f"option '{name}'" in text and "token_urlsafe(32)" in text
    assert warning.filename == __file__, "the warning should point at the caller's line"
    for value in [options["secret_key"], *options.get("secret_key_fallbacks", [])]:
        if isinstance(value, str):
            assert value not in text


def test_a_strong_key_draws_no_warning() -> None:
    import secrets

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SessionMiddleware(lambda e, s: [], secret_key=secrets.token_urlsafe(32))


# -- secrets out of sight ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0", id="at-sign"),
        pytest.param("redis://u:pa:ss/w@host/0", "redis://u:***@host/0", id="colon-slash"),
        pytest.param("postgresql+psycopg://u:pw@db/app", "postgresql+psycopg://u:***@db/app"),
        pytest.param("redis://host/0?password=pw&db=1", "redis://host/0?password=***&db=1"),
        pytest.param("redis://:p?s#s@h/0", "redis://:***@h/0", id="question-hash"),
        pytest.param("redis://u@host/0", "redis://u@host/0", id="no-password"),
        pytest.param("sqlite:///x@y.db", "sqlite:///x@y.db", id="at-in-path"),
        pytest.param("file:./sessions", "file:./sessions", id="not-a-network-url"),
    ],
)
def test_urls_are_shown_with_the_whole_password_masked(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_the_config_repr_shows_no_secret() -> None:
    config = Config.from_options(
        secret_key=SECRET,
        secret_key_fallbacks=[SECRET + "-old"],
        store="redis://:p@ss:w0rd@localhost:6379/0",
        store_options={"password": "hunter2-hunter2", "connect_args": {"passwd": "q1w2e3r4"}},
    )
    text = repr(config)
    for secret in (SECRET, "p@ss", "w0rd", "hunter2", "q1w2e3r4"):
        assert secret not in text
    assert "redis://:***@localhost:6379/0" in text and "timeout=3600" in text


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"secret_key": 123456789}, id="numeric-key"),
        pytest.param(
            {"secret_key": SECRET, "secret_key_fallbacks": "one-old-key-string"}, id="fb"
        ),
        pytest.param({"secret_key": SECRET, "secret_key_fallbacks": [SECRET, 42]}, id="fb-item"),
    ],
)
def test_a_config_error_about_a_secret_never_quotes_it(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_options(**options)
    text = str(raised.value)
    assert "option 'secret_key" in text
    for value in ("123456789", "one-old-key-string", "42"):
        assert value not in text


def test_a_paste_interpolation_error_does_not_quote_the_line(tmp_path: Path) -> None:
    path = tmp_path / "paste.ini"
    path.write_text("[app:main]\nsession.secret_key = %(missing)s-the-real-secret-value\n")
    with pytest.raises(ConfigError) as raised:
        Config.from_ini(path)
    assert "the-real-secret-value" not in str(raised.value)
    assert "session.secret_key" in str(raised.value)


def test_a_store_option_that_is_bad_json_is_not_quoted(tmp_path: Path) -> None:
    path = tmp_path / "app.ini"
    path.write_text(
        f"[session]\nsecret_key = {SECRET}\nstore = redis://localhost/0\n"
        'store.sentinel_kwargs = {"password": "hunter2-hunter2", oops}\n'
    )
    with pytest.raises(ConfigError, match="store option 'sentinel_kwargs' is not valid JSON") as e:
        Config.from_ini(path)
    assert "hunter2" not in str(e.value)
