"""Importing wsgisession costs no framework: only the helper modules import theirs."""

from __future__ import annotations

import subprocess
import sys

import pytest

FRAMEWORKS = {"flask", "bottle", "pyramid", "web", "django", "webob", "zope"}


def _imported_frameworks(module: str) -> set[str]:
    code = (
        f"import sys, {module}\n"
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    output = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return FRAMEWORKS & set(output.split())


def test_wsgisession_imports_no_framework() -> None:
    assert _imported_frameworks("wsgisession") == set()


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        pytest.param("wsgisession.flask", {"flask"}, id="flask"),
        pytest.param("wsgisession.bottle", {"bottle"}, id="bottle"),
        pytest.param("wsgisession.pyramid", {"pyramid", "zope"}, id="pyramid"),
        pytest.param("wsgisession.webpy", {"web"}, id="webpy"),
        pytest.param("wsgisession.django", {"django"}, id="django"),
    ],
)
def test_each_helper_imports_only_its_framework(module: str, expected: set[str]) -> None:
    assert _imported_frameworks(module) == expected
