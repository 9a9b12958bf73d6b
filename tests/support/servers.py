"""A real maira-sae server for tests: in this process, on its own event loop thread, bound to
127.0.0.1 with ports picked by the OS, serving the demo checkpoint through the real config,
loading and start-up code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from maira_sae.server.demo.random_checkpoint import DemoCheckpoint
from maira_sae.server.service.app import BoundPorts, MairaSaeServer
from maira_sae.server.service.config import SaeSpec, ServerConfig, ServingConfig
from maira_sae.server.service.config_sources import config_from_mapping

T = TypeVar("T")


def demo_config(demo: DemoCheckpoint, **sections: Any) -> ServerConfig:
    """A config serving the demo checkpoint on loopback; ``sections`` replace whole sections
    (e.g. ``batching=BatchingConfig(queue_size=2)``) or top-level fields."""
    base = config_from_mapping(
        {
            "serving": {"host": "127.0.0.1", "grpc_port": 0, "metrics_port": 0, "health_port": 0},
            "model": {"path": str(demo.model_dir)},
        }
    )
    base = replace(
        base,
        saes=(
            SaeSpec(
                id="demo-ef4-layer15",
                path=demo.sae_dir,
                interpretations_path=demo.interpretations_path,
            ),
        ),
    )
    return replace(base, **sections)


class RunningServer:
    """A started server and the loop it runs on; ``target`` is its gRPC address."""

    def __init__(self, server: MairaSaeServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop

    @property
    def ports(self) -> BoundPorts:
        assert self.server.ports is not None
        return self.server.ports

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    def call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        """Run a coroutine on the server's loop from the test's thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)


@contextmanager
def running_server(config: ServerConfig) -> Iterator[RunningServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server-loop", daemon=True)
    thread.start()
    server = MairaSaeServer(config)
    running = RunningServer(server, loop)
    try:
        running.call(server.start(), timeout_s=120)
        yield running
    finally:
        running.call(server.stop(grace_s=1.0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def loopback(serving: ServingConfig) -> ServingConfig:
    return replace(serving, host="127.0.0.1", grpc_port=0, metrics_port=0, health_port=0)
