"""Fixtures: the rendered overlays (see manifests.py)."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import OVERLAYS, Rendered, render


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render(request.param)


@pytest.fixture
def gpu() -> Rendered:
    return render("gpu")


@pytest.fixture
def demo() -> Rendered:
    return render("demo-cpu")
