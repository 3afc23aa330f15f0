"""Django: the one-file example project over real servers, ``django.contrib.sessions`` absent."""

from __future__ import annotations

from pathlib import Path

from tests.frameworks.flows import ExampleFlows, log_in
from tests.frameworks.servers import (
    Browser,
    Server,
    check_example_counts,
    run_example,
)


class TestDjangoExample(ExampleFlows):
    """The Django example's flows over waitress and gunicorn."""

    example = "django_app"

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
