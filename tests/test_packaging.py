"""The wheel's package list against the tree: every folder with an ``__init__.py`` under the
folders that package-dir maps is listed, and every listed package is such a folder or declared
data (``make wheel-smoke`` then installs the wheel and imports every module)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
    "setuptools"
]


def _packages_in_the_tree() -> set[str]:
    found = set()
    for package, folder in SETUPTOOLS["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            inside = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((package, *inside)))
    return found


def test_every_package_of_the_tree_is_in_the_wheel():
    missing = _packages_in_the_tree() - set(SETUPTOOLS["packages"])
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_every_listed_package_is_code_or_declared_data():
    data = set(SETUPTOOLS["package-data"])
    stale = set(SETUPTOOLS["packages"]) - _packages_in_the_tree() - data
    assert not stale, f"listed in pyproject.toml but not in the tree: {sorted(stale)}"
    for package in data:
        folder = _folder_of(package)
        for pattern in SETUPTOOLS["package-data"][package]:
            assert list(folder.glob(pattern)), f"{package}: {pattern} matches no file"


def _folder_of(package: str) -> Path:
    """Where package-dir puts ``package``: under the longest mapped package it starts with."""
    mapped = max(
        (root for root in SETUPTOOLS["package-dir"] if f"{package}.".startswith(f"{root}.")),
        key=len,
    )
    inside = package.removeprefix(mapped).strip(".").split(".")
    return (REPO / SETUPTOOLS["package-dir"][mapped]).joinpath(*filter(None, inside))
