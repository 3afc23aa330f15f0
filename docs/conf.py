"""Sphinx configuration: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.

The build is offline (no intersphinx) and documents the installed package, so run it
after ``pip install -e '.[docs]'``.
"""

from __future__ import annotations

import sys
from importlib.metadata import version as _version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

project = "wsgisession"
author = "The wsgisession developers"
copyright = "The wsgisession developers"
release = _version("wsgisession")
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "wsgisession_docs"]

exclude_patterns = ["_build"]
default_role = "code"
nitpicky = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autoclass_content = "class"

html_theme = "furo"
html_title = f"wsgisession {release}"
html_static_path: list[str] = []
