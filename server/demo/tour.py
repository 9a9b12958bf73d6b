"""``make demo``: the whole tour on the synthetic world demo, through the real server and client.

Materialises the world demo (once, cached), starts ``maira-sae-server serve --demo`` on
loopback, calls every RPC with the ``maira-sae`` command line (the client SDK underneath) on
two generated studies, one with a pacemaker and one without: finds the pacemaker-labelled
feature, shows where it fires on the film (a heat map, and its hottest patch against where the
device is drawn) and its dashboard page (the held-out films where it fires hardest, its logit
effects), shows the explanation the offline explainer writes for it from held-out studies (no
LLM, no annotations) with its detection score beside the shuffled control, clamps it while
writing the report of the study without one, and stops the server with SIGTERM as Kubernetes
would.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maira_sae.client import Client, TokenFilter, TokenKind
from maira_sae.client import Study as ClientStudy
from maira_sae.client.cli import main as client_main
from maira_sae.server.demo.world.reports import PACEMAKER
from maira_sae.server.demo.world.studies import WorldStudy, generate_study
from maira_sae.server.maira2.image_preprocessing import ImageGeometry

BANNER = """\
maira-sae demo tour
===================
The demo is a SYNTHETIC WORLD, not MAIRA-2 and not radiology: cartoon chest radiographs with
four known findings (pacemaker, line or tube, pleural effusion, cardiomegaly), a tiny model with
MAIRA-2's exact schema (config keys, tensor names, tokens, prompt template, image preprocessing)
trained on them, and a Matryoshka SAE trained on its layer-15 residual stream. Its features and
steering are real measurements of that toy model and say nothing clinical. Serve
microsoft/maira-2 and its SAEs for real results (README.md).
"""
TOUR_SEED = 7  # the tour's two studies: one with a pacemaker, one without
_FRONTAL_ONLY = {"with_lateral": False, "with_prior": False}
TOP_K = 8
# The clamp: this many times the feature's peak on the study with a pacemaker, at these positions.
STEER_PEAKS = 1.5
STEER_SCOPE = "all"


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
        _tour(target, args.output, args.checkpoint.resolve())
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


def _tour(target: str, output: Path, checkpoint: Path) -> None:
    with_device = generate_study(TOUR_SEED, concepts={PACEMAKER}, **_FRONTAL_ONLY)
    without = generate_study(TOUR_SEED + 1, concepts=(), **_FRONTAL_ONLY)
    paced, clear = output / "with-pacemaker.png", output / "without-pacemaker.png"
    Image.fromarray(with_device.frontal).save(paced)
    Image.fromarray(without.frontal).save(clear)
    study = ["--frontal", str(paced), "--indication", with_device.indication]

    def client(*words: str) -> None:
        print(f"\n$ maira-sae {shlex.join(words)}", flush=True)
        if client_main(["--target", target, *words]) != 0:
            raise SystemExit(f"maira-sae {words[0]} failed")

    _section("GetInfo: the model, the SAEs, the limits")
    client("info")
    _section("SearchFeatures: the features whose label says pacemaker")
    client("search", "pacemaker", "--limit", "5")
    _section("SearchFeatures by activation: the features that fire on a text, labelled or not")
    client("search", "--by-activation", "Pacemaker in place. No pleural effusion.", "--limit", "5")
    _section("TopFeatures: the strongest labelled features on the film of a study with a pacemaker")
    heatmap, html = output / "top-features.png", output / "top-features.html"
    client(
        "top", *study, "--kinds", "image_patch", "--labelled-only", "--k", str(TOP_K),
        "--heatmap", str(heatmap), "--pictures", "4", "--html", str(html),
    )  # fmt: skip
    with Client(target) as sdk:
        feature, peak = _top_pacemaker_feature(sdk, with_device, paced)
    _section(f"GetFeature {feature}: its dashboard (100 held-out studies) and logit effects")
    page = output / f"feature-{feature}.html"
    client("feature", str(feature), "--nearest", "3", "--html", str(page))
    _section(f"explain: the offline explainer's explanation of feature {feature}, and its score")
    _explain_step(checkpoint, feature)
    _section("Encode: per-token SAE features of the study with its findings teacher-forced")
    client(
        "encode", *study, "--response", with_device.findings,
        "--top-k-per-token", "5", "--kinds", "response",
    )  # fmt: skip
    strength = STEER_PEAKS * peak
    _section(f"GenerateSteered on a study without a pacemaker: feature {feature} clamped at "
             f"{strength:.0f}")  # fmt: skip
    client(
        "generate", "--frontal", str(clear), "--indication", without.indication,
        "--max-new-tokens", "48", "--steer", f"{feature}:clamp:{strength:.1f}@{STEER_SCOPE}",
    )  # fmt: skip
    print(f"\npictures: {heatmap}, {html} and the dashboard page {page}")


def _explain_step(checkpoint: Path, feature: int) -> None:
    """Explain every live feature of the served SAE from the world's held-out studies with the
    offline explainer, score each by detection, and print ``feature``'s with the control."""
    from maira_sae.server.demo.world.explain_eval import demo_studies, explain_world
    from maira_sae.server.demo.world.measure import load_world_demo

    started = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # beside the server's threads, more would only contend
    try:
        result = explain_world(load_world_demo(checkpoint), demo_studies())
    finally:
        torch.set_num_threads(threads)
    explained = result.explained.get(feature)
    if explained is None:
        print(f"feature {feature} has no held-out examples on both sides here: not scored")
        return
    score, control = explained.score, result.control[feature]
    print(
        f'feature {feature}: "{explained.explanation}"\n'
        f"  detection AUROC {score.auroc:.2f}, balanced accuracy {score.balanced_accuracy:.2f} "
        f"({score.n_activating} held-out activating, {score.n_non_activating} non-activating "
        f"examples, judge {score.scorer})\n"
        f"  shuffled control (another feature's explanation on these examples): AUROC "
        f"{control.auroc:.2f}\n"
        f"  over {len(result.explained)} live features: mean AUROC {result.mean_auroc:.2f}, "
        f"shuffled control {result.control_mean_auroc:.2f} "
        f"({time.monotonic() - started:.0f} s; python -m "
        "maira_sae.server.demo.world.explain_eval prints the world's figures)"
    )


def _top_pacemaker_feature(sdk: Client, study: WorldStudy, frontal: Path) -> tuple[int, float]:
    """The top pacemaker-labelled feature on the film and its peak; prints where it fires
    against where the device is drawn."""
    top = sdk.top_features(
        ClientStudy.from_files(frontal, indication=study.indication),
        k=TOP_K,
        token_filter=TokenFilter(kinds=frozenset({TokenKind.IMAGE_PATCH})),
        labelled_only=True,
    )
    ranked = [f for f in top.features if (f.label or "").startswith(PACEMAKER)]
    if not ranked:
        raise SystemExit(f"no pacemaker-labelled feature among the study's top {TOP_K}")
    best = ranked[0]
    grid = best.grid_for(0)
    assert grid is not None  # the scored tokens are the film's patches
    values = grid.to_array()
    row, col = np.unravel_index(int(values.argmax()), values.shape)
    rows, cols = _grid_span(study.boxes[PACEMAKER], study.frontal.shape, values.shape)
    print(
        f"\nfeature {best.feature} ({best.label}): rank {top.features.index(best) + 1} among the "
        f"labelled features; fires on {int((values > 0).sum())} of {values.size} patches, peak "
        f"{best.score:.1f} at patch row {row}, col {col}; the pacemaker's can is drawn in patch "
        f"rows {rows[0]}-{rows[1]}, cols {cols[0]}-{cols[1]}, its lead from there into the heart"
    )
    return best.feature, best.score


def _grid_span(
    box: tuple[int, int, int, int], shape: tuple[int, ...], grid: tuple[int, ...]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """A pixel box (left, top, right, bottom) of the original image as patch rows and columns
    of the model's centred square crop."""
    geometry = ImageGeometry.for_size(width=shape[1], height=shape[0])
    left, top, right, bottom = box

    def span(low: int, high: int, offset: int, cells: int) -> tuple[int, int]:
        scale = cells / geometry.crop_side
        first = int((low - offset) * scale)
        last = int(np.ceil((high - offset) * scale)) - 1
        return max(first, 0), min(last, cells - 1)

    return (
        span(top, bottom, geometry.crop_top, grid[0]),
        span(left, right, geometry.crop_left, grid[1]),
    )


def _section(title: str) -> None:
    print(f"\n=== {title}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
