"""Fixtures shared across the test tree.

Nothing here imports torch at collection time: client tests must run without the server extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from maira_sae.server.demo_checkpoint import DemoCheckpoint


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> DemoCheckpoint:
    """The demo MAIRA-2 snapshot, SAE and interpretations (seed 0), written once per session.

    Shared by many tests: treat it as read-only (copy a folder before changing it).
    """
    from maira_sae.server.demo_checkpoint import write_demo_checkpoint

    return write_demo_checkpoint(tmp_path_factory.mktemp("demo-checkpoint"), seed=0)
