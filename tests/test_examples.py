"""The examples: each app's flows through its framework, and the Flask demo as a process."""

from __future__ import annotations

import http.cookiejar
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from werkzeug.test import Client

from tests.helpers import FakeClock

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_wsgi(name: str, tmp_path: Path) -> Any:
    module = load_example(name)
    app = module.create_app(
        secret_key="example-tests-secret-long-enough-for-a-key",
        store=f"file:{tmp_path / 'sessions'}",
        cleanup_interval=0,
    )
    return app


@pytest.mark.parametrize("name", ["flask_app", "bottle_app"])
def test_counter_login_flash_logout(name: str, tmp_path: Path, clock: FakeClock) -> None:
    client = Client(make_wsgi(name, tmp_path))
    assert 'id="count">1<' in client.get("/").get_data(as_text=True)
    assert 'id="count">2<' in client.get("/").get_data(as_text=True)
    before = client.get_cookie("session_id")
    assert before is not None

    response = client.post("/login", data={"username": "ann"}, follow_redirects=True)
    page = response.get_data(as_text=True)
    assert 'id="user">ann<' in page and "Welcome, ann!" in page
    after = client.get_cookie("session_id")
    assert after is not None and after.value != before.value  # regenerated on login
    assert after.expires is None  # not remembered: a browser-lifetime cookie
    assert 'id="count">3<' in page

    clock.advance(6)
    page = client.get("/").get_data(as_text=True)
    assert "Welcome" not in page and 'id="user">ann<' in page

    client.post("/logout")
    page = client.get("/").get_data(as_text=True)
    assert 'id="count">1<' in page and "Log in" in page


@pytest.mark.parametrize("name", ["flask_app", "bottle_app"])
def test_login_with_remember_me_sets_a_persistent_cookie(name: str, tmp_path: Path) -> None:
    client = Client(make_wsgi(name, tmp_path))
    client.post("/login", data={"username": "bob", "remember": "on"})
    cookie = client.get_cookie("session_id")
    assert cookie is not None and cookie.expires is not None
    assert "(remembered)" in client.get("/").get_data(as_text=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_flask_demo_runs_as_the_readme_says(tmp_path: Path) -> None:
    """``python examples/flask_app.py`` serves a counting page on the default file store."""
    port = _free_port()
    env = {**os.environ, "PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "flask_app.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                first = opener.open(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        second = opener.open(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert 'id="count">1<' in first
        assert 'id="count">2<' in second
        assert any((tmp_path / "sessions").rglob("*")), "the default file store was not used"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_flask_your_sessions_page_ends_another_device(tmp_path: Path) -> None:
    app = make_wsgi("flask_app", tmp_path)
    phone, laptop = Client(app), Client(app)
    phone.post("/login", data={"username": "ann"}, headers={"User-Agent": "Phone"})
    laptop.post("/login", data={"username": "ann"}, headers={"User-Agent": "Laptop"})
    page = laptop.get("/sessions").get_data(as_text=True)
    assert page.count('class="session"') == 2
    assert "Phone" in page and "Laptop" in page and "this device" in page

    phone_handle = page.split('name="handle" value="')[1].split('"')[0]
    laptop.post("/sessions/end", data={"handle": phone_handle})
    assert "Log in" in phone.get("/").get_data(as_text=True)
    assert laptop.get("/sessions").get_data(as_text=True).count('class="session"') == 1

    intruder = Client(app)
    intruder.post("/login", data={"username": "eve"})
    laptop_handle = laptop.application.wsgi_app.user_sessions("ann")[0].handle
    intruder.post("/sessions/end", data={"handle": laptop_handle})
    assert 'id="user">ann<' in laptop.get("/").get_data(as_text=True)


def test_flask_log_out_all_other_devices(tmp_path: Path) -> None:
    app = make_wsgi("flask_app", tmp_path)
    clients = [Client(app) for _ in range(3)]
    for client in clients:
        client.post("/login", data={"username": "ann"})
    clients[0].post("/sessions/end-others")
    assert 'id="user">ann<' in clients[0].get("/").get_data(as_text=True)
    for client in clients[1:]:
        assert "Log in" in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("name", ["flask_app", "bottle_app"])
def test_login_with_an_empty_name_links_no_user(name: str, tmp_path: Path) -> None:
    """An empty user id is refused by the session; the examples link no user instead."""
    client = Client(make_wsgi(name, tmp_path))
    response = client.post("/login", data={"username": ""})
    assert response.status_code in (302, 303)
