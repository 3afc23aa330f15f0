"""Django: the one-file example project over real servers, ``django.contrib.sessions`` absent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.frameworks.flows import ExampleFlows, log_in
from tests.frameworks.servers import (
    SERVERS,
    Browser,
    Server,
    check_example_counts,
    run_example,
    serve_example,
)


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """``examples/django_app.py`` under each server, shared by the module's flows."""
    with serve_example(request.param, "django_app", tmp_path_factory.mktemp("django")) as running:
        yield running


class TestDjangoExample(ExampleFlows):
    """The Django example's flows over waitress and gunicorn."""

    def test_only_the_wsgisession_cookie_is_set(self, server: Server) -> None:
        """Django's own session app is not installed: no ``sessionid`` cookie appears."""
        browser = Browser(server.url)
        browser.get("/")
        log_in(browser, "eve", remember=True)
        browser.post("/logout")
        browser.get("/")
        assert set(browser.cookies) == {"session_id"}


def test_example_runs_as_the_readme_says(tmp_path: Path) -> None:
    """``python examples/django_app.py`` serves the demo on the default file store."""
    with run_example("django_app", tmp_path) as running:
        check_example_counts(running)
