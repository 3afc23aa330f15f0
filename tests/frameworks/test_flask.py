"""Flask: the example over real servers, and ``wsgisession.flask``."""

from __future__ import annotations

from typing import Any

import flask
import pytest
from markupsafe import Markup
from werkzeug.test import Client

from tests.frameworks.flows import ExampleFlows
from tests.frameworks.servers import SECRET
from wsgisession import Session, SessionError, SessionMiddleware
from wsgisession.flask import current_session, flash, get_flashed_messages, init_app


class TestFlaskExample(ExampleFlows):
    """The Flask example's flows over waitress and gunicorn."""

    example = "flask_app"


def _app() -> flask.Flask:
    app = flask.Flask(__name__)

    @app.get("/")
    def index() -> str:
        s = current_session()
        assert isinstance(s, Session)
        s["n"] = s.get("n", 0) + 1
        return str(s["n"])

    return app


def test_init_app_wraps_the_app_and_keeps_the_middleware() -> None:
    app = _app()
    middleware = init_app(app, {"secret_key": SECRET}, store="memory://", cleanup_interval=0)
    assert isinstance(middleware, SessionMiddleware)
    assert app.wsgi_app is middleware
    assert app.extensions["wsgisession"] is middleware
    client = Client(app)
    assert client.get("/").get_data(as_text=True) == "1"
    assert client.get("/").get_data(as_text=True) == "2"


def test_init_app_twice_is_refused() -> None:
    app = _app()
    init_app(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    with pytest.raises(SessionError, match="already"):
        init_app(app, secret_key=SECRET, store="memory://", cleanup_interval=0)


def test_init_app_on_an_app_wrapped_by_hand_is_refused() -> None:
    # Wrapped twice, the extension would hold the outer middleware, the sessions the inner.
    app = _app()
    app.wsgi_app = SessionMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, secret_key=SECRET, store="memory://", cleanup_interval=0
    )
    with pytest.raises(SessionError, match="wrap it once"):
        init_app(app, secret_key=SECRET, store="memory://", cleanup_interval=0)


def _flashing_app() -> flask.Flask:
    """An app whose ``/add`` flashes a message of the default category and a warning."""
    app = flask.Flask(__name__)

    @app.get("/add")
    def add() -> str:
        flash("saved")
        flash("careful", "warning")
        return "ok"

    return app


def test_a_lone_category_filters_as_flasks_own_does() -> None:
    app = _flashing_app()
    init_app(app, secret_key=SECRET, store="memory://", cleanup_interval=0)

    @app.get("/warnings")
    def warnings() -> str:
        return repr(get_flashed_messages(category_filter="warning"))

    client = Client(app)
    client.get("/add")
    assert client.get("/warnings").get_data(as_text=True) == "['careful']"


def test_a_markup_flash_renders_as_html_as_in_flask() -> None:
    # It came back as a plain string, and the template escaped it.
    app = flask.Flask(__name__)
    init_app(app, secret_key=SECRET, store="memory://", cleanup_interval=0)

    @app.get("/add")
    def add() -> str:
        flash(Markup("<b>saved</b>"))
        return "ok"

    @app.get("/show")
    def show() -> str:
        return flask.render_template_string(
            "{% for m in get_flashed_messages() %}{{ m }}{% endfor %}"
        )

    client = Client(app)
    client.get("/add")
    assert client.get("/show").get_data(as_text=True) == "<b>saved</b>"


def test_flash_sends_flasks_signal_and_templates_show_flasks_own_queue_too() -> None:
    # Extensions flash with flask.flash (Flask-Login's login_required), into Flask's own
    # session: with init_app's template global those were never shown.
    app = _flashing_app()
    app.secret_key = "flask-own-cookie-session-key"
    init_app(app, secret_key=SECRET, store="memory://", cleanup_interval=0)

    @app.get("/theirs")
    def theirs() -> str:
        flask.flash("Please log in.", "info")
        return "ok"

    @app.get("/show")
    def show() -> str:
        return flask.render_template_string(
            "{{ get_flashed_messages(with_categories=True)|safe }}"
            "|{{ get_flashed_messages(category_filter=['info'])|safe }}"
        )

    seen: list[tuple[str, Any]] = []

    def note(sender: flask.Flask, message: Any, category: str) -> None:
        assert sender is app
        seen.append((category, message))

    client = Client(app)
    with flask.message_flashed.connected_to(note, app):
        client.get("/add")
        client.get("/theirs")
    assert seen == [("message", "saved"), ("warning", "careful"), ("info", "Please log in.")]
    assert client.get("/show").get_data(as_text=True) == (
        "[('info', 'Please log in.'), ('message', 'saved'), ('warning', 'careful')]"
        "|['Please log in.']"
    )
    assert client.get("/show").get_data(as_text=True) == "[]|[]"


def test_current_session_without_the_middleware_names_it() -> None:
    app = _app()
    with app.test_request_context("/"), pytest.raises(SessionError, match="SessionMiddleware"):
        current_session()


def test_current_session_outside_a_request_is_flasks_error() -> None:
    with pytest.raises(RuntimeError, match="request context"):
        current_session()


def test_flash_and_get_flashed_messages_go_through_the_session() -> None:
    app = _flashing_app()

    @app.get("/show")
    def show() -> str:
        errors = get_flashed_messages(category_filter=["warning"])
        pairs = get_flashed_messages(with_categories=True)
        return flask.render_template_string(
            "{{ errors|safe }}|{{ pairs|safe }}|{{ get_flashed_messages()|safe }}",
            errors=errors,
            pairs=pairs,
        )

    init_app(app, secret_key=SECRET, store="memory://", cleanup_interval=0)
    client = Client(app)
    client.get("/add")
    assert client.get("/show").get_data(as_text=True) == (
        "['careful']|[('message', 'saved'), ('warning', 'careful')]|['saved', 'careful']"
    )
    assert client.get("/show").get_data(as_text=True) == "[]|[]|[]"
