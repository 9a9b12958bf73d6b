"""``maira-sae-server make-demo``: the world demo by default, the random schema checkpoint on
request, and never into a folder that holds something else."""

from __future__ import annotations

import json

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


def test_make_demo_random_writes_the_real_image_size(tmp_path):
    assert main(["make-demo", "--random", str(tmp_path / "demo")]) == 0
    assert _image_tokens(tmp_path / "demo") == 1369  # 37 x 37, as for the real MAIRA-2


def test_make_demo_refuses_a_folder_that_holds_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["make-demo", str(tmp_path)]) == 2
    assert main(["make-demo", "--random", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_make_demo_studies_writes_the_held_out_studies_as_a_study_folder(tmp_path, capsys):
    import numpy as np

    from maira_sae.server.demo.world.dashboard import DASHBOARD_SEED
    from maira_sae.server.demo.world.studies import world_dataset
    from maira_sae.server.training.study_folder import read_study_folder

    out = tmp_path / "studies"
    assert main(["make-demo", "--studies", str(out), "--num-studies", "6"]) == 0
    assert "6 held-out world studies written" in capsys.readouterr().out
    read = read_study_folder(out)  # the layout train-sae, build-dashboard and explain read
    expected = world_dataset(6, DASHBOARD_SEED)
    assert [s.name for s in read] == [f"held-out-{i:03d}" for i in range(6)]
    for folder_study, world in zip(read, expected, strict=True):
        assert np.array_equal(folder_study.study.frontal, world.frontal)
        assert (folder_study.study.lateral is None) == (world.lateral is None)
        assert (folder_study.study.prior is None) == (world.prior is None)
        assert folder_study.findings == world.findings
        assert folder_study.study.indication == world.indication
        assert folder_study.study.prior_report == world.prior_findings
    assert any(s.study.prior is not None for s in read)
    assert not list(out.rglob("*concept*"))  # a study folder holds what a real one holds
    assert main(["make-demo", "--studies", str(out)]) == 2  # never into a folder in use
    assert "not an empty folder" in capsys.readouterr().err


def test_make_demo_needs_a_folder(capsys):
    assert main(["make-demo"]) == 2
    assert "needs DIR, --studies STUDIES or both" in capsys.readouterr().err
