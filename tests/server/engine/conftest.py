"""The demo engine shared by the engine tests that only read it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from maira_sae.server.engine.engine import Engine
    from maira_sae.server.maira2.study import Study


@pytest.fixture(scope="session")
def demo_engine(demo_checkpoint) -> Engine:
    """The demo checkpoint's engine, loaded through the real runtime (dynamic decode)."""
    from maira_sae.server.service.metrics import Metrics
    from maira_sae.server.service.runtime import load_runtime
    from tests.support.servers import demo_config

    return load_runtime(demo_config(demo_checkpoint), Metrics()).engine


@pytest.fixture(scope="module")
def study() -> Study:
    from maira_sae.server.maira2.study import Study
    from maira_sae.server.maira2.synthetic_image import synthetic_chest_image

    return Study(frontal=synthetic_chest_image(), indication="Shortness of breath.")
