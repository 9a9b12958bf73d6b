"""Fixtures of the explain tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The world demo (model and SAE) and 32 of its held-out studies as a study folder."""
    from maira_sae.server.demo.layout import MODEL_FOLDER, SAE_FOLDER
    from maira_sae.server.demo.world.materialise import ensure_world_demo
    from maira_sae.server.demo.world.study_export import write_held_out_studies

    root = tmp_path_factory.mktemp("world")
    demo = ensure_world_demo(root / "demo")
    write_held_out_studies(root / "studies", 32)
    return demo / MODEL_FOLDER, demo / SAE_FOLDER, root / "studies"
