"""The maira-sae command line against the real demo server: main(argv) in-process with its
output parsed back, plus one subprocess run in an interpreter where torch cannot be imported."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from maira_sae.client.cli import main


@pytest.fixture
def cli(demo_server, capsys):
    """Runs the CLI on the demo server; returns (exit status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        status = main(["--target", demo_server.target, *argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def run_json(cli, *argv: str):
    status, out, err = cli(*argv, "--json")
    assert status == 0, err
    return json.loads(out)


def test_info_feature_search(cli):
    assert run_json(cli, "info")["default_sae_id"] == "demo-ef4-layer15"
    matches = run_json(cli, "search", "pacemaker", "--limit", "2")["matches"]
    assert len(matches) == 2
    feature = run_json(cli, "feature", str(matches[0]["feature"]["feature"]))
    assert feature["label"] == matches[0]["feature"]["label"]
    status, out, _ = cli("info")
    assert status == 0 and "demo-ef4-layer15" in out and "d_sae" in out


def test_encode(cli, frontal_png):
    data = run_json(
        cli,
        "encode",
        "--frontal",
        str(frontal_png),
        "--kinds",
        "prompt_text",
        "--top-k-per-token",
        "3",
    )
    assert {t["token"]["kind"] for t in data["tokens"]} == {"prompt_text"}
    assert all(len(t["feature_ids"]) <= 3 for t in data["tokens"])
    status, out, _ = cli("encode", "--frontal", str(frontal_png), "--indication", "Cough.")
    assert status == 0 and "image_patch" in out and "INDICATION:" in out


def test_top_writes_heatmap_and_html(cli, frontal_png, tmp_path):
    heatmap, page = tmp_path / "top.png", tmp_path / "top.html"
    data = run_json(
        cli,
        "top", "--frontal", str(frontal_png), "--response", "No effusion.", "--k", "8",
        "--heatmap", str(heatmap), "--html", str(page),
    )  # fmt: skip
    assert len(data["features"]) == 8
    assert Image.open(heatmap).format == "PNG"
    html = page.read_text()
    assert html.count("<section") == 6 and "fired" in html
    on_image = next(f["feature"] for f in data["features"] if f["image_grids"])
    single = tmp_path / "one.png"
    status, out, _ = cli(
        "top", "--frontal", str(frontal_png), "--k", "8", "--heatmap", str(single),
        "--feature", str(on_image),
    )  # fmt: skip
    assert status == 0 and "rank" in out
    assert Image.open(single).size == Image.open(frontal_png).size


def test_generate_streams_json_lines_and_columns(cli, frontal_png):
    argv = ["generate", "--frontal", str(frontal_png), "--max-new-tokens", "4"]
    status, out, err = cli(*argv, "--steer", "3:add:60", "--steer", "3:clamp:40,5:ablate", "--json")
    assert status == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    finished = [e for e in events if e["type"] == "finished"]
    assert [e["variant_index"] for e in finished] == [0, 1, 2]
    assert sum(e["type"] == "token" for e in events) == 12
    status, out, _ = cli(*argv, "--steer", "3:add:60")
    lines = out.splitlines()
    assert status == 0 and "baseline" in lines[0] and "3:add:60" in lines[0]
    assert len([line for line in lines[2:] if line.count(" | ") == 2]) == 4  # one row per token
    assert "== baseline: 4 tokens, length ==" in out


def test_errors_exit_non_zero_with_the_servers_message(cli, frontal_png, tmp_path):
    status, _, err = cli("feature", "1000000")
    assert status == 1 and "OUT_OF_RANGE" in err and "request id" in err
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    status, _, err = cli("top", "--frontal", str(not_an_image))
    assert status == 2 and "notes.txt" in err
    with pytest.raises(SystemExit):
        cli("generate", "--frontal", str(frontal_png), "--steer", "3:push:1")


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
import maira_sae.client, maira_sae.client.cli, maira_sae.client.pictures
assert sys.modules["torch"] is None
from maira_sae.client.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_runs_in_an_interpreter_without_torch(demo_server):
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "--target", demo_server.target, "info", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"]["image_tokens_per_image"] == 1369


def test_import_does_not_load_torch():
    code = "import sys, maira_sae.client.cli; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_study_inputs_from_the_command_line_accept_16_bit_png(cli, tmp_path):
    pixels = (np.random.default_rng(0).random((64, 80)) * 65535).astype(np.uint16)
    path = tmp_path / "frontal16.png"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    data = run_json(cli, "top", "--frontal", str(path), "--k", "2")
    assert len(data["features"]) == 2
