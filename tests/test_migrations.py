"""The migration guides' apps: each "before" app and its "after" on wsgisession answer
the same visits with the same pages, and the "after" apps link sessions to their user.

``docs/migrating/*.rst`` include these files, so the code a guide shows is the code
tested here. Each "before" app runs on its own library (Beaker, Flask-Session,
Django's sessions, web.py's sessions), in files under the test's directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from werkzeug.test import Client, TestResponse

from tests.frameworks.django_env import django_settings
from tests.helpers import SECRET
from wsgisession import cli

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "examples" / "migrations"
LIBRARIES = ["beaker", "flask_session", "django", "webpy"]
APPS = [f"{library}_{side}" for library in LIBRARIES for side in ("before", "after")]
AFTER = [f"{library}_after" for library in LIBRARIES]


def _load(name: str) -> ModuleType:
    # Registered, so Django can import the module as its URLconf.
    module_name = f"migration_{name}"
    spec = importlib.util.spec_from_file_location(module_name, MIGRATIONS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _options(directory: Path) -> dict[str, Any]:
    """The wsgisession options of an "after" app, and of the command line's ini file."""
    return {"secret_key": SECRET, "store": f"file:{directory / 'sessions'}", "cleanup_interval": 0}


@contextlib.contextmanager
def serve(name: str, directory: Path) -> Iterator[Client]:
    """A client of the app in ``examples/migrations/<name>.py``."""
    module = _load(name)
    library, side = name.rsplit("_", 1)
    if library == "django":
        overrides = {**module.SETTINGS, "ROOT_URLCONF": module}
        if side == "before":
            (directory / "sessions").mkdir()
            overrides["SESSION_FILE_PATH"] = str(directory / "sessions")
        else:
            overrides["WSGISESSION"] = module.session_options(**_options(directory))
        with django_settings(**overrides):
            yield Client(WSGIHandler())
        return
    if side == "before":
        app = module.create_app(str(directory / "sessions"))
    else:
        app = module.create_app(**_options(directory))
    yield Client(app.wsgifunc() if library == "webpy" else app)


def page(response: TestResponse) -> tuple[int, str | None]:
    """The visit count and the signed-in user a page shows."""
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_data(as_text=True)
    count = re.search(r'id="count">(\d+)<', body)
    user = re.search(r'id="user">([^<]*)<', body)
    assert count is not None, body
    return int(count.group(1)), user.group(1) if user else None


def cookies(client: Client) -> dict[str, str]:
    return {cookie.key: cookie.value for cookie in client._cookies.values()}


@pytest.mark.parametrize("name", APPS)
def test_count_log_in_and_log_out(name: str, tmp_path: Path) -> None:
    with serve(name, tmp_path) as client:
        assert page(client.get("/")) == (1, None)
        assert page(client.get("/")) == (2, None)
        before = cookies(client)

        assert client.post("/login", data={"username": "ann"}).status_code in (302, 303)
        if name != "webpy_before":  # web.py's sessions can't change the id
            assert cookies(client) != before, "the session id did not change on login"
        assert page(client.get("/")) == (3, "ann")

        assert client.post("/logout").status_code in (302, 303)
        assert page(client.get("/")) == (1, None)


@pytest.mark.parametrize("name", AFTER)
def test_a_user_is_listed_and_logged_out_everywhere(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wsgisession sessions --user`` finds the user's sessions, ``logout`` ends them."""
    ini = tmp_path / "app.ini"
    options = _options(tmp_path)
    ini.write_text(f"[session]\nsecret_key = {SECRET}\nstore = {options['store']}\n")
    with serve(name, tmp_path) as phone, serve(name, tmp_path) as laptop:
        for client in (phone, laptop):
            client.post("/login", data={"username": "ann"})
        capsys.readouterr()

        assert cli.main(["sessions", "--user", "ann", "--config", str(ini)]) == 0
        assert capsys.readouterr().out.startswith("2 live sessions of user 'ann':")
        assert cli.main(["logout", "--user", "ann", "--config", str(ini)]) == 0
        assert capsys.readouterr().out.startswith("2 ")
        assert page(phone.get("/"))[1] is None and page(laptop.get("/"))[1] is None


@pytest.mark.parametrize("name", ["django_before", "django_after"])
@pytest.mark.parametrize("remember", [True, False])
def test_django_remember_me_keeps_its_meaning(name: str, remember: bool, tmp_path: Path) -> None:
    """``set_expiry(30 days)`` and ``set_expiry(0)`` do in both what a Django user expects."""
    with serve(name, tmp_path) as client:
        form = {"username": "ann", **({"remember": "on"} if remember else {})}
        client.post("/login", data=form)
        cookie = next(iter(client._cookies.values()))
        assert (cookie.expires is not None) is remember


def test_every_app_is_a_before_or_an_after() -> None:
    assert sorted(path.stem for path in MIGRATIONS.glob("*.py")) == sorted(APPS)


@pytest.mark.parametrize("library", LIBRARIES)
def test_each_guide_shows_its_apps_as_they_are_tested(library: str) -> None:
    guide = ROOT / "docs" / "migrating" / f"{library.replace('_', '-')}.rst"
    before, after = (f"examples/migrations/{library}_{side}.py" for side in ("before", "after"))
    assert f".. wsgisession-diff:: {before} {after}\n" in guide.read_text(encoding="utf-8")
