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
    assert status == 0 and "default   demo-ef4-layer15" in out and "d_sae" in out
    assert "dicom     DICOM modalities CR, DR, DX only; Modality LUT" in out
    limits = run_json(cli, "info")["limits"]
    assert (
        f"new tokens {limits['max_new_tokens']} (default {limits['default_max_new_tokens']})" in out
    )
    assert f"queue {limits['queue_size']}" in out
    admission = run_json(cli, "info")["admission"]
    assert f"hold {admission['long_call_places']} of {limits['queue_size']} places" in out
    assert "x-maira-sae-priority: batch weighs" in out
    assert admission["refusals_paced"] is True and "refusals paced per connection" in out


def test_search_by_activation_and_the_feature_neighbours(cli):
    found = run_json(cli, "search", "--by-activation", "Enlarged heart.", "--limit", "3")
    assert len(found["matches"]) == 3 and found["activation_tokens"][0] == "<s>"
    for match in found["matches"]:
        assert match["kind"] == "activation" and match["score"] > 0
        assert found["activation_tokens"][match["token_index"]] == match["token_text"]
    status, out, _ = cli("search", "--by-activation", "Enlarged heart.", "--limit", "3")
    assert status == 0 and out.startswith("tokens  '<s>'") and "activation" in out
    feature = run_json(cli, "feature", "3", "--nearest", "4")
    assert len(feature["nearest_features"]) == 4 and feature["provenance"] is None
    status, out, _ = cli("feature", "3", "--nearest", "2")
    assert status == 0 and "nearest features by decoder cosine" in out
    status, out, _ = cli("search", "pacemaker", "--limit", "2")
    header, _, first = out.splitlines()[:3]
    assert header.split() == ["match", "relevance", "feature", "label", "label", "score"]
    assert status == 0 and first.startswith("phrase")  # the random demo's long labels
    label_score = run_json(cli, "search", "pacemaker", "--limit", "1")["matches"][0]["feature"][
        "interpretation_score"
    ]
    assert first.split()[-1] == f"{label_score:.3f}"


@pytest.mark.parametrize("argv", [("search",), ("search", "heart", "--by-activation", "heart")])
def test_search_needs_a_query_or_a_text(cli, argv):
    status, _, err = cli(*argv)
    assert status == 2 and "QUERY or --by-activation TEXT" in err


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
    assert status == 0 and "fires on" in out
    row = next(line for line in out.splitlines() if line.split()[1:2] == [str(on_image)])
    assert "frontal" in row
    width, height = Image.open(frontal_png).size
    assert Image.open(single).width == width and Image.open(single).height > height  # titled


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


# --- the papercuts of issue 17 ---------------------------------------------------------------


def test_negative_feature_is_refused_by_the_parser(cli):
    with pytest.raises(SystemExit) as exit_:
        cli("feature", "-1")
    assert exit_.value.code == 2


def test_image_index_past_the_study_is_an_argument_error(cli, frontal_png):
    status, out, err = cli("encode", "--frontal", str(frontal_png), "--image-index", "2")
    assert status == 2 and out == ""
    assert "--image-index 2: the study has 1 image(s) (0: frontal)" in err
    assert "Traceback" not in err


def test_image_index_and_range_filters(cli, frontal_png):
    two = ["--frontal", str(frontal_png), "--lateral", str(frontal_png)]
    data = run_json(cli, "encode", *two, "--image-index", "1", "--kinds", "image_patch")
    assert {t["token"]["image_index"] for t in data["tokens"]} == {1}
    assert len(data["tokens"]) == 37 * 37
    data = run_json(cli, "encode", *two, "--range", "0:10", "--range", "20:25")
    assert {t["token"]["position"] for t in data["tokens"]} <= set(range(10)) | set(range(20, 25))
    top = run_json(cli, "top", *two, "--image-index", "1", "--k", "5")
    assert {g["image_index"] for f in top["features"] for g in f["image_grids"]} <= {1}
    with pytest.raises(SystemExit):
        cli("encode", *two, "--range", "9:3")
    with pytest.raises(SystemExit):  # generation has no token filter to take
        cli("generate", *two, "--image-index", "1")


def test_help_lists_kinds_modes_and_scopes(capsys):
    for command in ("encode", "generate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "image_patch, prompt_text, special, response" in text
    assert "modes: add, clamp, ablate, scale" in text
    assert "scopes: all, prompt, generated, image, text" in text


def test_a_server_error_prints_no_steering_table(cli, frontal_png):
    status, out, err = cli("generate", "--frontal", str(frontal_png), "--steer", "999999:add:1")
    assert status == 1 and out == "" and "999999" in err


def test_variant_names_are_never_cut(cli, frontal_png, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")  # two columns of 23 characters
    name = "3:clamp:40,5:ablate,7:scale:0.5@generated"
    status, out, err = cli(
        "generate", "--frontal", str(frontal_png), "--max-new-tokens", "2", "--steer", name
    )
    assert status == 0, err
    lines = out.splitlines()
    header = lines[: next(i for i, line in enumerate(lines) if set(line) <= set("- |"))]
    cells = [line.split(" | ")[2].strip() for line in header]
    assert len(header) > 1 and "".join(cells) == name


def test_heatmap_says_when_fewer_features_than_asked_fire(cli, frontal_png, tmp_path):
    argv = ["top", "--frontal", str(frontal_png), "--k", "3", "--heatmap", str(tmp_path / "h.png")]
    status, _, err = cli(*argv, "--html", str(tmp_path / "h.html"), "--pictures", "6")
    assert status == 0
    assert "of the 6 pictures asked for" in err
    assert "--html shows 3 of the 6 features asked for: the result has 3" in err
    status, _, err = cli(*argv, "--per-panel-scale")
    assert status == 0 and Image.open(tmp_path / "h.png").format == "PNG"


def test_feature_past_the_sae_is_an_error(cli, frontal_png, tmp_path):
    d_sae = run_json(cli, "info")["saes"][0]["d_sae"]
    status, _, err = cli(
        "top", "--frontal", str(frontal_png), "--heatmap", str(tmp_path / "h.png"),
        "--feature", str(d_sae),
    )  # fmt: skip
    assert status == 2
    assert f"--feature {d_sae}: SAE demo-ef4-layer15 has {d_sae} features (0..{d_sae - 1})" in err


def test_html_can_show_image_patches(cli, frontal_png, tmp_path):
    page = tmp_path / "t.html"
    argv = ["top", "--frontal", str(frontal_png), "--k", "2", "--pictures", "2", "--html"]
    assert cli(*argv, str(page), "--html-images")[0] == 0
    assert page.read_text().count('<figure class="patches" data-image="0">') == 2
    assert cli(*argv, str(page))[0] == 0
    assert "patches" not in page.read_text().split("<body>")[1]


def test_multi_frame_dicom_needs_a_frame(cli, tmp_path, frontal_png):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = (np.random.default_rng(1).random((2, 64, 64)) * 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.Modality = "DX"
    dataset.Rows = dataset.Columns = 64
    dataset.NumberOfFrames = 2
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = frames.tobytes()
    path = tmp_path / "two-frames.dcm"
    dataset.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).NumberOfFrames == 2
    status, _, err = cli("top", "--frontal", str(path), "--k", "2")  # the server's refusal
    assert status == 1 and "INVALID_ARGUMENT" in err
    assert "study.frontal: multi-frame DICOM (2 frames)" in err and "--frame N" in err
    tops = [
        run_json(cli, "top", "--frontal", str(path), "--frame", str(frame), "--k", "4")
        for frame in (0, 1)
    ]
    assert all(len(top["features"]) == 4 for top in tops)
    assert tops[0]["features"] != tops[1]["features"]  # the server decoded the frame asked for
    with_png = ["--frontal", str(path), "--lateral", str(frontal_png), "--frame", "1"]
    assert len(run_json(cli, "top", *with_png, "--k", "2")["features"]) == 2  # PNG: one frame
    status, _, err = cli("top", "--frontal", str(path), "--frame", "2")
    assert status == 1 and "frame 2 was chosen, but the DICOM file has 2 frame(s)" in err
