"""``train-sae`` end to end on the demo checkpoint: a study folder in, a loadable SAE out."""

from __future__ import annotations

import argparse
import json

import pytest
from PIL import Image

from maira_sae.sae import load_sae
from maira_sae.sae.activation_store import MANIFEST_FILE
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image
from maira_sae.server.training.cli import add_train_sae_command, run_train_sae
from maira_sae.server.training.folder_training import STORE_FOLDER
from maira_sae.server.training.study_folder import read_study_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_sae_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture
def study_folder(tmp_path):
    root = tmp_path / "studies"
    for name, findings in (("a", "Left pleural effusion."), ("b", None)):
        folder = root / name
        folder.mkdir(parents=True)
        Image.fromarray(synthetic_chest_image()).save(folder / "frontal.png")
        (folder / "indication.txt").write_text("Chest pain.\n")
        if findings:
            (folder / "findings.txt").write_text(findings)
    return root


def test_study_folder_layout(study_folder):
    studies = read_study_folder(study_folder)
    assert [s.name for s in studies] == ["a", "b"]
    assert studies[0].findings == "Left pleural effusion." and studies[1].findings is None
    assert studies[0].study.indication == "Chest pain." and studies[0].study.lateral is None
    assert studies[0].study.frontal.shape == synthetic_chest_image().shape
    (study_folder / "c").mkdir()
    with pytest.raises(ValueError, match="c: no frontal image"):
        read_study_folder(study_folder)


def test_train_sae_writes_a_servable_sae_and_a_report(
    demo_checkpoint, study_folder, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = [
        "train-sae",
        *("--model", str(demo_checkpoint.model_dir), "--studies", str(study_folder)),
        *("--out", str(out), "--k", "8", "--steps", "40", "--batch-size", "128"),
        *("--warmup-steps", "5", "--threshold-start-step", "10"),
        *("--image-patch-stride", "3", "--drop-boilerplate"),
        *("--device", "cpu", "--checkpoint-every", "20"),
    ]
    assert run_train_sae(parse(argv)) == 0
    sae = load_sae(out / "sae")
    assert (sae.d_model, sae.d_sae, sae.metadata.layer, sae.metadata.k) == (64, 256, 15, 8)
    assert sae.threshold is not None
    summary = json.loads((out / "training_report.json").read_text())
    assert summary["num_studies"] == 2
    report = summary["report"]
    # 40 x 128 tokens, far fewer than --dead-after-tokens: the window is the whole run
    assert report["train_dead_window_tokens"] == report["tokens_seen"] == 40 * 128
    assert set(report["dead_fraction_definitions"]) == {
        "train_dead_fraction",
        "evaluation.dead_fraction",
    }
    assert summary["settings"]["harvest_filter"]["image_patch_stride"] == 3
    evaluation = summary["report"]["evaluation"]
    patches = 2 * 13 * 13  # every third row and column of two 37 x 37 grids
    assert patches < evaluation["tokens"] < patches + 30  # + the indications and one report
    captured = capsys.readouterr()
    assert "L0" in captured.out

    assert (out / STORE_FOLDER / MANIFEST_FILE).is_file() and "harvested" in captured.err

    resumed = [*argv[: argv.index("--steps") + 1], "60", *argv[argv.index("--steps") + 2 :]]
    assert run_train_sae(parse([*resumed, "--resume"])) == 0
    assert "harvested" not in capsys.readouterr().err  # the harvest was reused
    summary = json.loads((out / "training_report.json").read_text())
    assert (summary["report"]["resumed_from_step"], summary["report"]["steps"]) == (40, 60)

    other_layer = [*argv, "--layer", "14"]
    with pytest.raises(SystemExit, match=r"other settings.*remove .*activations"):
        run_train_sae(parse(other_layer))


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (["--groups", "8,8", "--dict-size", "32"], "--groups sum to 16, not --dict-size 32"),
        (["--k", "40", "--dict-size", "32"], "--k 40 is over the dictionary's 32 features"),
        (["--steps", "10"], "--threshold-start-step 1000 is not below --steps 10"),
        (["--store", "{tmp}/no-store"], "no-store is not an activation store (no manifest.json)"),
        (["--studies", "{tmp}/nowhere"], "nowhere is not a folder (one subfolder per study)"),
        (["--device", "gpu"], "--device 'gpu':"),
    ],
)
def test_train_sae_checks_its_arguments_before_loading_anything(
    study_folder, tmp_path, capsys, arguments, problem
):
    """The model path does not exist: a refusal naming the argument, not a load error, shows
    the arguments were checked first."""
    argv = [
        "train-sae",
        *("--model", str(tmp_path / "no-model"), "--studies", str(study_folder)),
        *("--out", str(tmp_path / "out")),
        *(argument.format(tmp=tmp_path) for argument in arguments),
    ]
    assert run_train_sae(parse(argv)) == 2
    assert problem.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [["--k", "0"], ["--lr", "-1"], ["--groups", "8,0"]])
def test_out_of_range_numbers_are_parse_errors(bad, capsys):
    with pytest.raises(SystemExit):
        parse(["train-sae", "--model", "m", "--studies", "s", "--out", "o", *bad])
    assert "error: argument" in capsys.readouterr().err


def test_train_sae_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        parse(["train-sae", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "optimiser steps (default: 20000)",
        "tokens per step (default: 4096)",
        "(default: 10000000)",
        "mean active features per token (default: 64)",
        "(default: 2e-4 / sqrt(dict_size / 2^14))",
        "initialisation and shuffling (default: 0)",
    ):
        assert shown in text
    assert "(default: None)" not in text and "(default: False)" not in text
