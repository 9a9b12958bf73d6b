"""``maira-sae-server make-demo``: the world demo by default, the random schema checkpoint on
request, and never into a folder that holds something else."""

from __future__ import annotations

import json

import pytest

from maira_sae.server.cli import main
from maira_sae.server.demo.layout import INTERPRETATIONS_FILE, MODEL_FOLDER, SAE_FOLDER


def _image_tokens(folder) -> int:
    config = json.loads((folder / MODEL_FOLDER / "config.json").read_text())
    return config["image_seq_length"]


def test_make_demo_writes_the_world_demo(tmp_path, capsys):
    assert main(["make-demo", str(tmp_path / "demo")]) == 0
    assert _image_tokens(tmp_path / "demo") == 64  # the world model's 8 x 8 patch grid
    assert (tmp_path / "demo" / SAE_FOLDER / "ae.pt").is_file()
    assert (tmp_path / "demo" / INTERPRETATIONS_FILE).is_file()
    assert str(tmp_path / "demo" / MODEL_FOLDER) in capsys.readouterr().out
    assert main(["make-demo", str(tmp_path / "demo")]) == 0  # a demo built before is reused


@pytest.mark.slow
def test_make_demo_random_writes_the_real_image_size(tmp_path):
    assert main(["make-demo", "--random", str(tmp_path / "demo")]) == 0
    assert _image_tokens(tmp_path / "demo") == 1369  # 37 x 37, as for the real MAIRA-2


def test_make_demo_refuses_a_folder_that_holds_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["make-demo", str(tmp_path)]) == 2
    assert main(["make-demo", "--random", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
