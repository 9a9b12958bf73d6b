"""Fixtures of the world tests: the shipped world demo, materialised once per session."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from maira_sae.server.maira2.processor import Maira2Processor


@pytest.fixture(scope="session")
def world_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed artifact materialised by ``ensure_world_demo`` (read-only: copy to edit)."""
    from maira_sae.server.demo.world.materialise import ensure_world_demo

    return ensure_world_demo(tmp_path_factory.mktemp("world-demo") / "demo")


@pytest.fixture(scope="module")
def world_stub(world_demo: Path):
    """A stub of a real server on 127.0.0.1 serving the world demo with the default settings."""
    import grpc

    from maira_sae.server.demo.layout import INTERPRETATIONS_FILE, MODEL_FOLDER, SAE_FOLDER
    from maira_sae.server.demo.random_checkpoint import DemoCheckpoint
    from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
    from tests.support.servers import demo_config, running_server

    checkpoint = DemoCheckpoint(
        world_demo,
        world_demo / MODEL_FOLDER,
        world_demo / SAE_FOLDER,
        world_demo / INTERPRETATIONS_FILE,
    )
    with (
        running_server(demo_config(checkpoint)) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        yield pb_grpc.MairaSaeServiceStub(channel)


@pytest.fixture(scope="session")
def world_processor(world_demo: Path) -> Maira2Processor:
    from maira_sae.server.demo.layout import MODEL_FOLDER
    from maira_sae.server.demo.world.train_model import load_processor

    return load_processor(world_demo / MODEL_FOLDER)
