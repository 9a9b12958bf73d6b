"""``make demo``: the whole tour on the demo checkpoint, through the real server and client.

Builds the demo checkpoint (once, cached), starts ``maira-sae-server serve --demo`` on
loopback, calls every RPC with the ``maira-sae`` command line (the client SDK underneath),
prints what comes back, writes a heat map and a shaded-token page, and stops the server with
SIGTERM as Kubernetes would.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from maira_sae.client import Client
from maira_sae.client.cli import main as client_main
from maira_sae.server.demo_checkpoint import demo_chest_image

BANNER = """\
maira-sae demo tour
===================
The demo checkpoint is a RANDOM TINY MODEL with the exact MAIRA-2 schema (config keys, tensor
names, sharding, tokens, prompt template, SAE layout). The real loading and serving code runs
on it, but its reports are gibberish and its features and steering mean nothing clinically.
Serve microsoft/maira-2 and microsoft/maira-2-sae for real results (README.md).
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path(".cache/demo-checkpoint"))
    parser.add_argument("--output", type=Path, default=Path(".cache/demo-output"))
    args = parser.parse_args(argv)
    print(BANNER)
    args.output.mkdir(parents=True, exist_ok=True)
    server_log = args.output / "server.log"
    server, target = _start_server(args.checkpoint.resolve(), server_log)
    try:
        _wait_until_serving(target)
        _tour(target, args.output)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
        _section(f"server stopped with SIGTERM: exit code {code} (log: {server_log})")
    return 0 if code == 0 else 1


def _start_server(checkpoint: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    _section(f"starting the server (demo checkpoint in {checkpoint}; built on first run)")
    command = [
        sys.executable, "-m", "maira_sae.server.cli", "serve", "--demo",
        "--model-demo-dir", str(checkpoint),
        "--serving-host", "127.0.0.1", "--serving-grpc-port", "0",
        "--serving-metrics-port", "0", "--serving-health-port", "0",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}:\n{log_path.read_text()}")
        for line in log_path.read_text(errors="replace").splitlines():
            if '"event": "serving"' in line:
                ports = json.loads(line)
                print(
                    f"serving: gRPC 127.0.0.1:{ports['grpc']}, health {ports['health']}, "
                    f"metrics http://127.0.0.1:{ports['metrics']}/metrics"
                )
                return server, f"127.0.0.1:{ports['grpc']}"
        time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start within 300 s")


def _wait_until_serving(target: str) -> None:
    with Client(target) as client:
        print(f"health: {client.health()}")


def _tour(target: str, output: Path) -> None:
    frontal = output / "frontal.png"
    Image.fromarray(demo_chest_image()).save(frontal)
    study = ["--frontal", str(frontal), "--indication", "Dyspnoea. Pacemaker check."]

    def client(*words: str) -> None:
        print(f"\n$ maira-sae {' '.join(words)}", flush=True)
        if client_main(["--target", target, *words]) != 0:
            raise SystemExit(f"maira-sae {words[0]} failed")

    _section("GetInfo: the model, the SAEs, the limits")
    client("info")
    _section("SearchFeatures and GetFeature: the feature catalogue (demo labels)")
    client("search", "pacemaker", "--limit", "3")
    with Client(target) as sdk:
        first = sdk.search_features("pacemaker", limit=1).matches[0].feature.feature
    client("feature", str(first))
    _section("Encode: per-token SAE features of a study with a teacher-forced report")
    client(
        "encode", *study, "--response", "Dual-chamber pacemaker in place.",
        "--top-k-per-token", "5", "--kinds", "prompt_text,response",
    )  # fmt: skip
    _section("TopFeatures: the strongest features, with a heat map and shaded tokens")
    heatmap, html = output / "top-features.png", output / "top-features.html"
    client("top", *study, "--k", "8", "--heatmap", str(heatmap), "--html", str(html))
    _section("GenerateSteered: baseline, ADD and CLAMP of the pacemaker-labelled feature")
    client(
        "generate", *study, "--max-new-tokens", "12",
        "--steer", f"{first}:add:40", "--steer", f"{first}:clamp:25",
    )  # fmt: skip
    print(f"\npictures: {heatmap} and {html}")


def _section(title: str) -> None:
    print(f"\n=== {title}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
