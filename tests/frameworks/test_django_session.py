"""Django's session API on ``request.session``, through ``django.test.Client``.

Each name Django's sessions answer to, mapped onto the wsgisession session or refused
with what to do instead, and what ``django.contrib`` builds on them: auth's ``login()``
and ``logout()``, messages kept in the session, a CSRF token kept in the session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.utils import timezone

import wsgisession.django
from tests.frameworks.django_env import (
    OURS,
    REMEMBER,
    ask,
    django_settings,
    project,
    session_options,
    visit,
)
from tests.helpers import FakeClock
from wsgisession import SessionError
from wsgisession.django import DjangoSession

TIMEOUT = 3600


@pytest.fixture
def options(tmp_path: Path) -> dict[str, Any]:
    """The ``WSGISESSION`` setting of the project."""
    return session_options(tmp_path)


@pytest.fixture
def client(options: dict[str, Any]) -> Iterator[Client]:
    """Django's test client on the project."""
    with project(options):
        yield Client()


def test_request_session_is_a_django_session(client: Client) -> None:
    session = ask(client, lambda s: s)
    assert isinstance(session, DjangoSession)
    assert session.config.remember_me_timeout == REMEMBER


def test_a_session_has_no_key_until_it_is_stored(client: Client) -> None:
    assert ask(client, lambda s: (s.accessed, s.session_key, s.is_empty(), s.modified)) == (
        False,
        None,
        True,
        False,
    )
    assert ask(client, lambda s: s.__setitem__("a", 1) or s.modified) is True
    key, empty = ask(client, lambda s: (s.session_key, s.is_empty()))
    assert key is not None and not empty
    assert client.cookies["session_id"].value.split(".")[0] == key


def test_modified_forces_a_save(client: Client) -> None:
    ask(client, lambda s: s.__setitem__("a", 1))
    saves = wsgisession.django.session_middleware().metrics

    before = saves()["saves"]
    assert ask(client, lambda s: s.setdefault("a", 2)) == 1
    assert saves()["saves"] == before, "a session only read was saved"

    def force(session: DjangoSession) -> bool:
        session.modified = True
        return session.modified

    assert ask(client, force) is True
    assert saves()["saves"] == before + 1


def test_the_mapping_is_the_sessions_data(client: Client) -> None:
    def fill(session: DjangoSession) -> None:
        session.update({"a": 1, "b": 2})
        session.setdefault("c", 3)

    ask(client, fill)
    assert ask(client, lambda s: (sorted(s.keys()), sorted(s.items()), sorted(s.values()))) == (
        ["a", "b", "c"],
        [("a", 1), ("b", 2), ("c", 3)],
        [1, 2, 3],
    )
    assert ask(client, lambda s: (s.pop("a"), s.pop("zz", None), s.get("zz", "d"))) == (
        1,
        None,
        "d",
    )
    ask(client, lambda s: s.clear())
    assert ask(client, lambda s: (len(s), s.session_key is not None)) == (0, True)


def test_cycle_key_gives_a_new_id_and_keeps_the_data(client: Client) -> None:
    ask(client, lambda s: s.__setitem__("a", 1))
    old = client.cookies["session_id"].value
    ask(client, lambda s: s.cycle_key())
    assert client.cookies["session_id"].value != old
    assert ask(client, lambda s: s["a"]) == 1

    replay = Client()
    replay.cookies["session_id"] = old
    assert ask(replay, lambda s: s.get("a")) is None


def test_flush_ends_the_session_and_its_user_link(client: Client) -> None:
    def sign_in(session: DjangoSession) -> None:
        session["a"] = 1
        session.user_id = "ann"

    ask(client, sign_in)
    assert len(wsgisession.django.session_middleware().user_sessions("ann")) == 1
    ask(client, lambda s: s.flush())
    assert client.cookies["session_id"]["max-age"] == "0"
    assert wsgisession.django.session_middleware().user_sessions("ann") == []
    assert ask(client, lambda s: s.get("a")) is None


def test_set_expiry_zero_and_none_make_an_ordinary_session(client: Client) -> None:
    ask(client, lambda s: [s.__setitem__("a", 1), s.set_expiry(REMEMBER)])
    assert int(client.cookies["session_id"]["max-age"]) == REMEMBER
    assert ask(client, lambda s: (s.remember, s.get_expire_at_browser_close())) == (True, False)

    ask(client, lambda s: s.set_expiry(0))
    assert client.cookies["session_id"]["max-age"] == ""
    assert ask(client, lambda s: (s.remember, s.get_expire_at_browser_close())) == (False, True)

    ask(client, lambda s: s.set_expiry(REMEMBER))
    ask(client, lambda s: s.set_expiry(None))
    assert ask(client, lambda s: s.remember) is False


@pytest.mark.parametrize(
    "expiry",
    [
        pytest.param(lambda: REMEMBER, id="seconds"),
        pytest.param(lambda: REMEMBER * 2.0, id="more-seconds"),
        pytest.param(lambda: timedelta(seconds=REMEMBER), id="timedelta"),
        pytest.param(lambda: timezone.now() + timedelta(seconds=REMEMBER), id="aware-datetime"),
        pytest.param(
            lambda: timezone.make_naive(timezone.now() + timedelta(seconds=REMEMBER)),
            id="naive-datetime",
        ),
    ],
)
def test_set_expiry_at_least_remember_me_timeout_remembers(
    client: Client, expiry: Callable[[], Any]
) -> None:
    def remember(session: DjangoSession) -> tuple[bool, int]:
        session["a"] = 1
        session.set_expiry(expiry())
        return session.remember, session.get_session_cookie_age()

    assert ask(client, remember) == (True, REMEMBER)
    assert int(client.cookies["session_id"]["max-age"]) == REMEMBER


@pytest.mark.parametrize(
    ("expiry", "error", "message"),
    [
        pytest.param(REMEMBER - 1, SessionError, "can't have a lifetime of its own", id="short"),
        pytest.param(300, SessionError, r"set_expiry\(0\)", id="minutes"),
        pytest.param(timedelta(days=1), SessionError, "remember_me_timeout", id="timedelta"),
        pytest.param(-1, ValueError, "in the future", id="negative"),
        pytest.param(datetime(2000, 1, 1, tzinfo=UTC), ValueError, "future", id="past"),
        pytest.param("3600", TypeError, "got str", id="str"),
        pytest.param(True, TypeError, "got bool", id="bool"),
    ],
)
def test_set_expiry_refuses_a_lifetime_it_cant_give(
    client: Client, expiry: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ask(client, lambda s: s.set_expiry(expiry))


def test_set_expiry_names_what_to_do_instead(client: Client) -> None:
    with pytest.raises(SessionError) as raised:
        ask(client, lambda s: s.set_expiry(86400))
    assert str(raised.value) == (
        "set_expiry(86400): a session can't have a lifetime of its own; it lasts "
        f"'timeout' ({TIMEOUT} s) from its last use or, remembered, 'remember_me_timeout' "
        f"({REMEMBER} s). Use set_expiry(0) for a session that ends with the browser, "
        f"set_expiry({REMEMBER}) or remember = True for a remembered one, or set the "
        "option remember_me_timeout to 86400 to remember sessions for that long"
    )


def test_expiry_figures_follow_the_session(client: Client, clock: FakeClock) -> None:
    def figures(session: DjangoSession) -> tuple[int, datetime, int, float]:
        session["a"] = 1
        return (
            session.get_expiry_age(),
            session.get_expiry_date(),
            session.get_session_cookie_age(),
            session.wsgi_session.expires_at,
        )

    age, date, cookie_age, expires_at = ask(client, figures)
    assert TIMEOUT - 1 <= age <= TIMEOUT and cookie_age == TIMEOUT
    assert date == datetime.fromtimestamp(expires_at, tz=UTC)

    clock.advance(TIMEOUT / 4)  # read, not yet due a refresh
    assert TIMEOUT * 3 / 4 - 1 <= ask(client, lambda s: s.get_expiry_age()) <= TIMEOUT * 3 / 4
    clock.advance(TIMEOUT)
    age, value = ask(client, lambda s: (s.get_expiry_age(), s.get("a")))
    assert value is None and TIMEOUT - 1 <= age <= TIMEOUT, "not a fresh session"


def test_without_a_user_the_figures_and_messages_name_anonymous_timeout(
    tmp_path: Path,
) -> None:
    # get_session_cookie_age() gave 'timeout' to a session that lasted anonymous_timeout,
    # where Django's equals get_expiry_age() just after a use.
    def figures(session: DjangoSession) -> tuple[int, int]:
        session["a"] = 1
        return session.get_expiry_age(), session.get_session_cookie_age()

    with project(session_options(tmp_path, anonymous_timeout=600)):
        client = Client()
        age, cookie_age = ask(client, figures)
        assert 599 <= age <= 600 and cookie_age == 600
        with pytest.raises(SessionError, match=r"lasts 'anonymous_timeout' \(600 s\) without a"):
            ask(client, lambda s: s.set_expiry(86400))
        ask(client, lambda s: setattr(s.wsgi_session, "user_id", "ann"))
        assert ask(client, lambda s: s.get_session_cookie_age()) == TIMEOUT


def test_expiry_figures_take_djangos_keywords_as_django_does(client: Client) -> None:
    # Django's own backends and some apps ask for the age or date of a given expiry.
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(hours=2)

    def figures(session: DjangoSession) -> list[Any]:
        return [
            session.get_expiry_age(expiry=300),
            session.get_expiry_age(modification=start, expiry=end),
            session.get_expiry_age(modification=start),
            session.get_expiry_date(expiry=end),
            session.get_expiry_date(modification=start, expiry=300),
            session.get_expiry_date(modification=start),
        ]

    assert ask(client, figures) == [
        300,
        7200,
        TIMEOUT,
        end,
        start + timedelta(seconds=300),
        start + timedelta(seconds=TIMEOUT),
    ]


def test_expiry_date_is_naive_local_time_without_use_tz(client: Client) -> None:
    with django_settings(USE_TZ=False):
        date, expires_at = ask(client, lambda s: (s.get_expiry_date(), s.wsgi_session.expires_at))
    assert date.tzinfo is None and date == datetime.fromtimestamp(expires_at)


def test_a_cookie_max_age_outlives_the_browser(options: dict[str, Any]) -> None:
    with project({**options, "cookie_max_age": 600}):
        assert ask(Client(), lambda s: s.get_expire_at_browser_close()) is False


def test_the_test_cookie(client: Client) -> None:
    ask(client, lambda s: s.set_test_cookie())
    assert ask(client, lambda s: s.test_cookie_worked()) is True
    ask(client, lambda s: s.delete_test_cookie())
    assert ask(client, lambda s: s.test_cookie_worked()) is False
    assert ask(Client(), lambda s: s.test_cookie_worked()) is False


def test_wsgisession_members_work_on_request_session(client: Client) -> None:
    def use(session: DjangoSession) -> tuple[int, list[str], bool]:
        session.incr("n")
        session.append("log", "x")
        session.set("short", 1, timeout=60)
        return session.incr("n"), session["log"], session.new

    assert ask(client, use) == (2, ["x"], True)
    assert ask(client, lambda s: (s["n"], s["short"], s.new)) == (2, 1, False)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda s: s.save(), r"save\(\) is not needed", id="save"),
        pytest.param(lambda s: s.create(), r"create\(\) is not needed", id="create"),
        pytest.param(lambda s: s.delete(), r"end this session with flush\(\)", id="delete"),
        pytest.param(lambda s: s.clear_expired(), "wsgisession cleanup", id="clear_expired"),
    ],
)
def test_store_methods_are_refused_with_what_to_do(
    client: Client, call: Callable[[DjangoSession], Any], message: str
) -> None:
    ask(client, lambda s: s.__setitem__("a", 1))
    with pytest.raises(SessionError, match=message):
        ask(client, lambda s: [s.__setitem__("b", 2), call(s)])
    assert ask(client, lambda s: "b" in s) is False, "a failed request saved its changes"


def test_clear_expired_is_refused_on_the_class() -> None:
    with pytest.raises(SessionError, match="cleanup_interval"):
        DjangoSession.clear_expired()


# -- what django.contrib builds on it -------------------------------------------------------


def link_session_to_user(sender: object, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    """The receiver frameworks.rst shows: a signed-in user's sessions are listed by user."""
    request.session.user_id = str(user.pk)


def test_django_auth_login_and_logout_work_on_the_session(options: dict[str, Any]) -> None:
    with project(
        options,
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes"],
        MIDDLEWARE=[OURS, "django.contrib.auth.middleware.AuthenticationMiddleware"],
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    ):
        from django.contrib.auth import authenticate, get_user_model, login, logout
        from django.contrib.auth.signals import user_logged_in

        call_command("migrate", verbosity=0)
        ann = get_user_model().objects.create_user("ann", password="secret")
        user_logged_in.connect(link_session_to_user)
        try:
            client = Client()
            ask(client, lambda s: s.__setitem__("cart", [1]))
            before = client.cookies["session_id"].value

            def sign_in(request: HttpRequest) -> HttpResponse:
                login(request, authenticate(request, username="ann", password="secret"))
                return HttpResponse()

            def whoami(request: HttpRequest) -> HttpResponse:
                return HttpResponse(request.user.username)

            visit(client, sign_in)
        finally:
            user_logged_in.disconnect(link_session_to_user)
        assert client.cookies["session_id"].value != before, "login() did not cycle the key"
        assert visit(client, whoami).content == b"ann"
        assert ask(client, lambda s: s["cart"]) == [1]
        users = wsgisession.django.session_middleware().user_sessions
        assert len(users(str(ann.pk))) == 1

        visit(client, lambda request: logout(request) or HttpResponse())
        assert visit(client, whoami).content == b""
        assert users(str(ann.pk)) == []
        get_user_model().objects.all().delete()


def test_django_messages_kept_in_the_session(options: dict[str, Any]) -> None:
    with project(
        options,
        INSTALLED_APPS=["django.contrib.messages"],
        MIDDLEWARE=[OURS, "django.contrib.messages.middleware.MessageMiddleware"],
        MESSAGE_STORAGE="django.contrib.messages.storage.session.SessionStorage",
    ):
        from django.contrib import messages

        client = Client()
        visit(client, lambda request: messages.info(request, "saved") or HttpResponse())

        def show(request: HttpRequest) -> HttpResponse:
            return HttpResponse(";".join(map(str, messages.get_messages(request))))

        assert visit(client, show).content == b"saved"
        assert visit(client, show).content == b"", "a message was shown twice"


def test_a_csrf_token_kept_in_the_session(options: dict[str, Any]) -> None:
    with project(
        options,
        MIDDLEWARE=[OURS, "django.middleware.csrf.CsrfViewMiddleware"],
        CSRF_USE_SESSIONS=True,
    ):
        from django.middleware.csrf import get_token

        client = Client(enforce_csrf_checks=True)
        token = visit(client, lambda request: HttpResponse(get_token(request))).content.decode()
        assert ask(client, lambda s: "_csrftoken" in s) is True

        def post(form: dict[str, str]) -> int:
            view = {"test.view": lambda request: HttpResponse("posted")}
            status: int = client.post("/run", form, **view).status_code
            return status

        assert post({}) == 403
        assert post({"csrfmiddlewaretoken": token}) == 200
