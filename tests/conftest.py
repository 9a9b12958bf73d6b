"""Fixtures shared across the test tree.

Nothing here imports torch at collection time: client tests must run without the server extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from maira_sae.server.demo.random_checkpoint import DemoCheckpoint

# A test that needs one of these loads a model or starts a real server: it is marked ``slow``
# (``make test-fast`` leaves it out). Other slow tests carry ``@pytest.mark.slow`` themselves.
SLOW_FIXTURES = frozenset({"demo_checkpoint", "world_demo", "world_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> DemoCheckpoint:
    """The demo MAIRA-2 snapshot, SAE and interpretations (seed 0), written once per session.

    Shared by many tests: treat it as read-only (copy a folder before changing it).
    """
    from maira_sae.server.demo.random_checkpoint import write_demo_checkpoint

    return write_demo_checkpoint(tmp_path_factory.mktemp("demo-checkpoint"), seed=0)


@pytest.fixture(scope="session")
def demo_server(demo_checkpoint: DemoCheckpoint):
    """One real server on 127.0.0.1 serving the demo checkpoint, shared by the session.

    Tests that need other settings (auth, a tiny queue, TLS) start their own with
    ``tests.support.servers.running_server(demo_config(...))``.
    """
    from tests.support.servers import demo_config, running_server

    with running_server(demo_config(demo_checkpoint)) as server:
        yield server


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one thread: its small matrices gain nothing from more, and on
    a shared machine a busy-waiting thread pool can slow them tenfold. Restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
