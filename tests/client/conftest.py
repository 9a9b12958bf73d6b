"""Fixtures for the SDK tests: the demo study as a file, and clients of the shared server.

The server side (demo checkpoint, server start) is imported lazily inside fixtures so the
pure tests of this folder (pictures, studies, DICOM) run without torch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from maira_sae.client import Client, Study


@pytest.fixture(scope="session")
def frontal_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo chest picture (560 x 600, not square) as a PNG file."""
    from maira_sae.server.maira2.synthetic_image import synthetic_chest_image

    path = tmp_path_factory.mktemp("study") / "frontal.png"
    Image.fromarray(synthetic_chest_image()).save(path)
    return path


@pytest.fixture(scope="session")
def study(frontal_png: Path) -> Study:
    return Study.from_files(frontal_png, indication="Cough.")


@pytest.fixture(scope="module")
def client(demo_server):
    with Client(demo_server.target, timeout_s=60) as client:
        yield client


@pytest.fixture(scope="session")
def world_server(tmp_path_factory: pytest.TempPathFactory):
    """A real server on 127.0.0.1 serving the synthetic world demo (what ``serve --demo``
    serves): a trained model and SAE with interpretations and shipped dashboards."""
    from maira_sae.server.demo.layout import INTERPRETATIONS_FILE, MODEL_FOLDER, SAE_FOLDER
    from maira_sae.server.demo.random_checkpoint import DemoCheckpoint
    from maira_sae.server.demo.world.materialise import ensure_world_demo
    from tests.support.servers import demo_config, running_server

    root = ensure_world_demo(tmp_path_factory.mktemp("world-demo") / "demo")
    demo = DemoCheckpoint(root, root / MODEL_FOLDER, root / SAE_FOLDER, root / INTERPRETATIONS_FILE)
    with running_server(demo_config(demo)) as server:
        yield server
