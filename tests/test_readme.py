"""The README's option table is generated from the option table in code."""

from __future__ import annotations

from pathlib import Path

from wsgisession.config import options_markdown

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_option_table_matches_the_code() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- options:start -->\n") + len("<!-- options:start -->\n")
    end = text.index("<!-- options:end -->")
    assert text[start:end] == options_markdown(), (
        "README option table drifted: paste wsgisession.config.options_markdown() output"
    )
