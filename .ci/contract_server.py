"""The demo server the contract check's other-language clients call (``make contract``).

    python .ci/contract_server.py STATE.json

Writes the random demo checkpoint (seed 0) under .cache/contract, starts a real server on
127.0.0.1 serving it as two SAEs ("demo-ef4-layer15" with interpretations, "demo-unlabelled"
without, so that FAILED_PRECONDITION can be reached), with a bearer token (UNAUTHENTICATED) and
a queue of one request (RESOURCE_EXHAUSTED), writes a demo frontal radiograph as a PNG, then
writes STATE.json: {"target", "token", "frontal_png", "default_sae_id", "unlabelled_sae_id"}.
Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
from dataclasses import replace
from pathlib import Path

from PIL import Image

from maira_sae.server.demo.random_checkpoint import write_demo_checkpoint
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image
from maira_sae.server.service.app import MairaSaeServer
from maira_sae.server.service.config import SaeSpec
from maira_sae.server.service.config_sources import config_from_mapping

CACHE = Path(".cache/contract")
LABELLED, UNLABELLED = "demo-ef4-layer15", "demo-unlabelled"


async def main(state_path: Path) -> None:
    demo_root = CACHE / "demo-checkpoint"
    demo = write_demo_checkpoint(demo_root, seed=0)
    token = secrets.token_urlsafe(16)
    config = config_from_mapping(
        {
            "serving": {"host": "127.0.0.1", "grpc_port": 0, "metrics_port": 0, "health_port": 0},
            "model": {"path": str(demo.model_dir)},
            "batching": {"queue_size": 1},
            "auth": {"token": token},
        }
    )
    config = replace(
        config,
        saes=(
            SaeSpec(id=LABELLED, path=demo.sae_dir, interpretations_path=demo.interpretations_path),
            SaeSpec(id=UNLABELLED, path=demo.sae_dir),
        ),
    )
    frontal = CACHE / "frontal.png"
    Image.fromarray(synthetic_chest_image()).save(frontal)
    server = MairaSaeServer(config)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    ports = await server.start()
    state = {
        "target": f"127.0.0.1:{ports.grpc}",
        "token": token,
        "frontal_png": str(frontal.resolve()),
        "default_sae_id": LABELLED,
        "unlabelled_sae_id": UNLABELLED,
    }
    written = state_path.with_suffix(".tmp")
    written.write_text(json.dumps(state))
    written.replace(state_path)  # whole or absent for the client that waits for it
    await stop.wait()
    await server.stop(grace_s=1.0)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
