"""The server decides which DICOM files it serves: the command line and the SDK send the file's
bytes, a real CT slice (pydicom's CT_small.dcm) is served by a server set to take any modality
and refused, with the server's reason, by one that takes radiographs only; the same from a
client-only install (an interpreter where neither torch nor pydicom can be imported)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maira_sae.client import Client, Study
from maira_sae.client.cli import main

pytest.importorskip("pydicom")  # for the server in this process; the client needs none

REFUSAL = (
    "DICOM modality 'CT' (computed tomography) is not a chest radiograph; accepted: CR, DR, DX"
)

CLIENT_ONLY = """
import sys
sys.modules["torch"] = None  # any import of these now raises ImportError
sys.modules["pydicom"] = None
from maira_sae.client.cli import main
status = main(sys.argv[1:])
assert sys.modules["pydicom"] is None and sys.modules["torch"] is None
sys.exit(status)
"""


@pytest.fixture(scope="module")
def ct_file() -> Path:
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("CT_small.dcm"))
    import pydicom

    assert pydicom.dcmread(path, stop_before_pixels=True).Modality == "CT"
    return path


@pytest.fixture(scope="module")
def any_modality_server(demo_checkpoint):
    """A real server started with ``--dicom-modalities '*'``."""
    from maira_sae.server.service.config import DicomConfig
    from tests.support.servers import demo_config, running_server

    with running_server(demo_config(demo_checkpoint, dicom=DicomConfig(modalities="*"))) as server:
        yield server


def run_client_only(target: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLIENT_ONLY, "--target", target, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_sends_a_ct_the_server_takes_and_shows_the_refusal_of_one_that_does_not(
    any_modality_server, demo_server, ct_file, tmp_path, capsys
):
    heatmap = tmp_path / "ct-heatmap.png"
    argv = ["top", "--frontal", str(ct_file), "--k", "3", "--json"]
    assert main(["--target", any_modality_server.target, *argv, "--heatmap", str(heatmap)]) == 0
    assert len(json.loads(capsys.readouterr().out)["features"]) == 3
    assert heatmap.stat().st_size > 0  # drawn from the CT as that server decodes it
    assert main(["--target", demo_server.target, *argv]) == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and f"study.frontal: {REFUSAL}" in err


@pytest.mark.slow  # three interpreters start
def test_a_client_only_install_sends_dicom_files_without_pydicom(
    any_modality_server, demo_server, ct_file, tmp_path
):
    served = run_client_only(any_modality_server.target, "top", "--frontal", str(ct_file), "--json")
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout)["features"]
    refused = run_client_only(demo_server.target, "top", "--frontal", str(ct_file))
    assert refused.returncode == 1 and f"study.frontal: {REFUSAL}" in refused.stderr
    assert "pydicom" not in refused.stderr
    # drawing a DICOM here is the one thing that needs pydicom, and it says how to get it
    heatmap = run_client_only(
        any_modality_server.target,
        "top",
        "--frontal",
        str(ct_file),
        "--heatmap",
        str(tmp_path / "x.png"),
    )
    assert heatmap.returncode == 2
    assert "DICOM support needs pydicom: pip install 'maira-sae[images]'" in heatmap.stderr


def test_the_sdk_leaves_the_judgement_to_the_server(any_modality_server, ct_file):
    study = Study.from_files(ct_file)
    assert study.frontal.data == ct_file.read_bytes()
    with Client(any_modality_server.target, timeout_s=60) as client:
        assert client.info().dicom.modalities == ()
        assert client.encode(study).total_tokens > 37 * 37
