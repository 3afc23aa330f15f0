"""What to install for a store's driver: the packages of one of this project's extras."""

from __future__ import annotations

import re
from importlib import metadata
from typing import Final

__all__ = ["install_hint"]

# A requirement in the package's metadata: name, [extras], version, then "; marker".
_REQUIREMENT: Final = re.compile(r"\s*([A-Za-z0-9_.\-]+)(?:\[([^\]]*)\])?([^;]*)(?:;(.*))?$")
_EXTRA: Final = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def install_hint(extra: str) -> str:
    """The ``pip install`` command of the packages *extra* brings in.

    Named by package, not as ``wsgisession[extra]``: installed from a clone, this
    project is not on the index, where its name belongs to an unrelated project.
    """
    packages = _packages(extra, set())
    if not packages:
        return f"install the {extra!r} extra"
    return "pip install " + " ".join(f"'{package}'" for package in packages)


def _packages(extra: str, seen: set[str]) -> list[str]:
    seen.add(extra)
    try:
        requirements = metadata.requires("wsgisession") or []
    except metadata.PackageNotFoundError:
        return []
    found: list[str] = []
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            continue
        name, extras, version, marker = match.groups()
        wanted = _EXTRA.search(marker or "")
        if wanted is None or wanted.group(1) != extra:
            continue
        if name.lower() == "wsgisession":
            for other in (extras or "").split(","):
                other = other.strip()
                if other and other not in seen:
                    found += _packages(other, seen)
        else:
            found.append(f"{name}{f'[{extras}]' if extras else ''}{version.strip()}")
    return found
