"""The demo service every CPU benchmark runs against: the demo checkpoint served by a real
server on loopback (the same start-up code as production), plus the server's own engine for
in-process comparisons and the demo study in both the server's and the SDK's form."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import bench_arguments, emit
from maira_sae.client import Study as ClientStudy
from maira_sae.server.demo.layout import INTERPRETATIONS_FILE, MODEL_FOLDER, SAE_FOLDER
from maira_sae.server.demo.random_checkpoint import DemoCheckpoint, ensure_random_demo
from maira_sae.server.engine.engine import Engine
from maira_sae.server.maira2.study import Study
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image
from tests.support.servers import RunningServer, demo_config, running_server

DEMO_DIR = Path(__file__).resolve().parent.parent / ".cache" / "random-demo-checkpoint"


@dataclass(frozen=True)
class DemoService:
    running: RunningServer
    pixels: np.ndarray  # the demo frontal image, 8-bit greyscale
    study: Study  # what the servicer builds from the SDK's request
    client_study: ClientStudy  # PNG-encoded once, as a caller holding a file would send it

    @property
    def engine(self) -> Engine:
        """The engine the server itself serves with (its thread idles between calls)."""
        runtime = self.running.server.runtime
        assert runtime is not None
        return runtime.engine

    @property
    def target(self) -> str:
        return self.running.target


def demo_checkpoint(folder: Path = DEMO_DIR) -> DemoCheckpoint:
    """The demo checkpoint, built once into ``folder`` (the folder ``make demo`` uses)."""
    root = ensure_random_demo(folder)
    return DemoCheckpoint(root, root / MODEL_FOLDER, root / SAE_FOLDER, root / INTERPRETATIONS_FILE)


@contextmanager
def demo_service(**config_sections: Any) -> Iterator[DemoService]:
    """A started demo server; ``config_sections`` replace config sections (see demo_config)."""
    pixels = synthetic_chest_image()
    config = demo_config(demo_checkpoint(), **config_sections)
    with running_server(config) as running:
        yield DemoService(
            running=running,
            pixels=pixels,
            study=Study(frontal=pixels),
            client_study=ClientStudy.of(pixels),
        )


def run_against_demo_service(run: Callable[..., Mapping[str, Any]], description: str) -> None:
    """A benchmark module's ``main``: parse the flags, serve the demo, run, print the JSON."""
    arguments = bench_arguments(description)
    with demo_service() as service:
        emit(run(service, quick=arguments.quick), arguments.out)
