"""Pyramid: the example over real servers, and ``wsgisession.pyramid``'s ISession adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyramid.config import Configurator
from pyramid.csrf import get_csrf_token
from pyramid.interfaces import ISession
from pyramid.request import Request
from pyramid.response import Response
from werkzeug.test import Client
from zope.interface.verify import verifyObject

from tests.frameworks.flows import ExampleFlows
from tests.frameworks.servers import (
    SECRET,
    check_example_counts,
    run_example,
)
from wsgisession import Session, SessionError, SessionMiddleware
from wsgisession.pyramid import PyramidSession


class TestPyramidExample(ExampleFlows):
    """The Pyramid example's flows over waitress and gunicorn."""

    example = "pyramid_app"


def _client(**views: Any) -> Client:
    """A Pyramid app with ``config.include("wsgisession.pyramid")`` and one route per view."""
    with Configurator() as config:
        config.include("wsgisession.pyramid")
        for name, view in views.items():
            config.add_route(name, f"/{name}")
            if isinstance(view, tuple):
                view, settings = view
            else:
                settings = {}
            config.add_view(view, route_name=name, **settings)
        app = config.make_wsgi_app()
    return Client(SessionMiddleware(app, secret_key=SECRET, store="memory://", cleanup_interval=0))


def test_request_session_is_an_isession_over_ours() -> None:
    seen: list[Any] = []

    def view(request: Request) -> Response:
        session = request.session
        seen.append(session)
        assert verifyObject(ISession, session)
        assert isinstance(session.wsgi_session, Session)
        assert session.new and session.created > 0
        session["n"] = 1
        return Response(str(len(session)))

    client = _client(view=view)
    assert client.get("/view").get_data(as_text=True) == "1"
    assert isinstance(seen[0], PyramidSession)


def test_flash_queues_peek_and_pop() -> None:
    def add(request: Request) -> Response:
        request.session.flash("saved")
        request.session.flash("saved", allow_duplicate=False)
        request.session.flash("careful", queue="warn")
        return Response("ok")

    def show(request: Request) -> Response:
        peeked = request.session.peek_flash()
        popped = request.session.pop_flash() + request.session.pop_flash("warn")
        return Response(f"{peeked}|{popped}|{request.session.peek_flash()}")

    client = _client(add=add, show=show)
    client.get("/add")
    assert client.get("/show").get_data(as_text=True) == ("['saved']|['saved', 'careful']|[]")
    assert client.get("/show").get_data(as_text=True) == "[]|[]|[]"


def test_csrf_through_pyramids_default_policy() -> None:
    def token(request: Request) -> Response:
        return Response(get_csrf_token(request))

    def change(request: Request) -> Response:
        return Response("changed")

    client = _client(
        token=token, change=(change, {"require_csrf": True, "request_method": "POST"})
    )
    value = client.get("/token").get_data(as_text=True)
    assert len(value) == 40
    assert client.get("/token").get_data(as_text=True) == value
    assert client.post("/change", data={"csrf_token": value}).status_code == 200
    assert client.post("/change", data={"csrf_token": "forged"}).status_code == 400


def test_changed_saves_a_value_mutated_in_place() -> None:
    def start(request: Request) -> Response:
        request.session["items"] = []
        return Response("")

    def append(request: Request) -> Response:
        request.session["items"].append(len(request.session["items"]))
        request.session.changed()
        return Response("")

    def show(request: Request) -> Response:
        return Response(repr(request.session["items"]))

    client = _client(start=start, append=append, show=show)
    client.get("/start")
    client.get("/append")
    client.get("/append")
    assert client.get("/show").get_data(as_text=True) == "[0, 1]"


def test_invalidate_ends_the_session() -> None:
    def login(request: Request) -> Response:
        session = request.session
        session.regenerate()
        session["user"] = "ann"
        session.user_id = "ann"
        session.remember = True
        session.set("note", "hi", timeout=60)
        return Response(f"{session.remember}:{session.user_id}")

    def logout(request: Request) -> Response:
        request.session.invalidate()
        return Response("")

    def who(request: Request) -> Response:
        return Response(f"{request.session.get('user')}:{request.session.new}")

    client = _client(login=login, logout=logout, who=who)
    assert client.get("/login").get_data(as_text=True) == "True:ann"
    cookie = client.get_cookie("session_id")
    assert cookie is not None and cookie.expires is not None
    assert client.get("/who").get_data(as_text=True) == "ann:False"
    client.get("/logout")
    assert client.get("/who").get_data(as_text=True) == "None:True"


def test_a_subrequest_without_the_parents_environ_says_how_to_give_it_one() -> None:
    # The message said to wrap an application that was wrapped.
    errors: list[str] = []

    def inner(request: Request) -> Response:
        try:
            request.session.get("n")
        except SessionError as exc:
            errors.append(str(exc))
        return Response("inner")

    def outer(request: Request) -> Response:
        request.invoke_subrequest(Request.blank("/inner"))
        copied = request.copy()
        copied.path_info = "/inner"
        request.invoke_subrequest(copied)
        return Response("outer")

    assert _client(inner=inner, outer=outer).get("/outer").get_data(as_text=True) == "outer"
    assert len(errors) == 1
    assert "make it with request.copy()" in errors[0]


def test_mapping_methods_reach_the_session() -> None:
    def view(request: Request) -> Response:
        session = request.session
        session.update(a=1, b=2)
        session.setdefault("c", 3)
        del session["a"]
        out = f"{sorted(session.items())}|{'b' in session}|{session.pop('b')}"
        session.clear()
        return Response(f"{out}|{len(session)}|{session!r}")

    body = _client(view=view).get("/view").get_data(as_text=True)
    assert body.startswith("[('b', 2), ('c', 3)]|True|2|0|<PyramidSession over <Session")


def test_example_runs_as_the_readme_says(tmp_path: Path) -> None:
    """``python examples/pyramid_app.py`` serves the demo on the default file store."""
    with run_example("pyramid_app", tmp_path) as running:
        check_example_counts(running)
