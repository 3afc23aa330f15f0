"""Bottle: the example over real servers, and ``wsgisession.bottle``."""

from __future__ import annotations

from pathlib import Path

import bottle
import pytest
from werkzeug.test import Client

from tests.frameworks.flows import ExampleFlows
from tests.frameworks.servers import (
    SECRET,
    check_example_counts,
    run_example,
)
from wsgisession import Session, SessionMiddleware
from wsgisession.bottle import SessionPlugin, session


class TestBottleExample(ExampleFlows):
    """The Bottle example's flows over waitress and gunicorn."""

    example = "bottle_app"


def _wrap(app: bottle.Bottle) -> Client:
    return Client(SessionMiddleware(app, secret_key=SECRET, store="memory://", cleanup_interval=0))


def test_plugin_passes_the_session_to_routes_that_ask() -> None:
    app = bottle.Bottle()
    app.install(SessionPlugin())

    @app.get("/count")
    def counter(session: Session) -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    @app.get("/item/<name>")
    def item(name: str, session: Session) -> str:
        return f"{name}:{session.get('n')}"

    client = _wrap(app)
    assert client.get("/count").get_data(as_text=True) == "1"
    assert client.get("/count").get_data(as_text=True) == "2"
    assert client.get("/item/x").get_data(as_text=True) == "x:2"


def test_plugin_leaves_other_routes_alone() -> None:
    app = bottle.Bottle()
    app.install(SessionPlugin())

    def plain() -> str:
        return str(session().get("n", 0))

    app.route("/plain", callback=plain)
    assert SessionPlugin().apply(plain, app.routes[0]) is plain
    assert _wrap(app).get("/plain").get_data(as_text=True) == "0"


def test_plugin_keyword_can_be_renamed() -> None:
    app = bottle.Bottle()
    app.install(SessionPlugin(keyword="s"))

    @app.get("/")
    def index(s: Session) -> str:
        s["seen"] = True
        return str(s.new)

    client = _wrap(app)
    assert client.get("/").get_data(as_text=True) == "True"
    assert client.get("/").get_data(as_text=True) == "False"


def test_two_plugins_for_one_keyword_are_refused() -> None:
    app = bottle.Bottle()
    app.install(SessionPlugin())
    with pytest.raises(bottle.PluginError, match="'session'"):
        app.install(SessionPlugin())
    app.install(SessionPlugin(keyword="other"))


def test_two_plugins_for_two_keywords_both_fill_theirs() -> None:
    # Bottle applies one plugin of a name; sharing one, the second would drop the first.
    app = bottle.Bottle()
    app.install(SessionPlugin())
    app.install(SessionPlugin(keyword="other"))

    @app.get("/")
    def index(session: Session, other: Session) -> str:
        return str(session is other)

    assert _wrap(app).get("/").get_data(as_text=True) == "True"


def test_example_runs_as_the_readme_says(tmp_path: Path) -> None:
    """``python examples/bottle_app.py`` serves the demo on the default file store."""
    with run_example("bottle_app", tmp_path) as running:
        check_example_counts(running)
