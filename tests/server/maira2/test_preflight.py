"""check-snapshot: whether a snapshot will load, from its small files alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from maira_sae.server.cli import main
from maira_sae.server.maira2.checkpoint import INDEX_FILE
from maira_sae.server.maira2.preflight import Level, check_snapshot
from maira_sae.server.maira2.tensor_names import NameForm, to_disk_name, to_memory_name


@pytest.fixture
def snapshot(demo_checkpoint, tmp_path) -> Path:
    """A copy of the demo snapshot (20 MB of weights in two shards)."""
    return Path(shutil.copytree(demo_checkpoint.model_dir, tmp_path / "maira-2"))


def levels(report) -> dict[str, Level]:
    return {finding.topic: finding.level for finding in report.findings}


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_the_demo_snapshot_will_load(snapshot):
    report = check_snapshot(str(snapshot))
    assert report.will_load
    assert set(levels(report).values()) == {Level.OK}
    assert set(levels(report)) == {
        "config",
        "RoPE",
        "tensor names",
        "image tokens",
        "chat template",
        "tokenizer",
        "processor",
        "weight files",
    }


SHARD = "model-00002-of-00002.safetensors"


def cut_shard(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def drop_one_tensor(path: Path) -> None:
    tensors = load_file(path)
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (Path.unlink, "missing"),
        (cut_shard, "not a whole safetensors file"),
        (drop_one_tensor, "lacks 1 indexed tensor(s)"),
    ],
    ids=["missing", "cut to 1000 bytes", "a tensor short"],
)
def test_a_damaged_shard_is_an_error_naming_the_file(snapshot, capsys, damage, expected):
    damage(snapshot / SHARD)
    assert main(["check-snapshot", str(snapshot), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    weights = next(f for f in report["findings"] if f["topic"] == "weight files")
    assert weights["level"] == "error"
    assert f"{snapshot / SHARD}: {expected}" in weights["detail"]
    assert "model-00001-of-00002" not in weights["detail"]


def test_a_missing_config_is_reported_beside_the_other_checks(snapshot, capsys):
    (snapshot / "config.json").unlink()
    assert main(["check-snapshot", str(snapshot)]) == 1
    printed = capsys.readouterr().out
    assert "error    config" in printed and "config.json" in printed
    for still_checked in ("chat template", "tokenizer", "weight files"):
        assert f"ok       {still_checked}" in printed


def test_transformers_5_names_and_rope_form_load_with_warnings(snapshot):
    def spelt_5x(name):
        return to_disk_name(to_memory_name(name), NameForm.TRANSFORMERS_5)

    def rename(index):
        index["weight_map"] = {spelt_5x(name): shard for name, shard in index["weight_map"].items()}

    for shard in snapshot.glob("*.safetensors"):
        tensors = load_file(shard)
        save_file({spelt_5x(k): v for k, v in tensors.items()}, shard, metadata={"format": "pt"})

    def rope_5x(config):
        text = config["text_config"]
        del text["rope_scaling"], text["rope_theta"]
        text["rope_parameters"] = {"rope_type": "linear", "factor": 1.5, "rope_theta": 1e4}

    edit_json(snapshot / INDEX_FILE, rename)
    edit_json(snapshot / "config.json", rope_5x)
    report = check_snapshot(str(snapshot))
    assert report.will_load
    found = levels(report)
    assert found["tensor names"] is found["RoPE"] is Level.WARNING
    details = {finding.topic: finding.detail for finding in report.findings}
    assert "transformers 5.x names" in details["tensor names"]
    assert "transformers 4.x (the original MAIRA-2 code) ignores it" in details["RoPE"]


def test_what_will_not_load_is_named(snapshot):
    edit_json(snapshot / INDEX_FILE, lambda index: index["weight_map"].update({"lm.x": "a"}))
    (snapshot / "tokenizer.json").unlink()
    report = check_snapshot(str(snapshot))
    assert not report.will_load
    found = levels(report)
    assert found["tensor names"] is found["tokenizer"] is found["processor"] is Level.ERROR
    details = {finding.topic: finding.detail for finding in report.findings}
    assert "1 unexpected, e.g. ['lm.x']" in details["tensor names"]
    assert "no tokenizer.json" in details["tokenizer"]


def test_the_command_prints_the_report_and_exits_by_verdict(snapshot, capsys):
    assert main(["check-snapshot", str(snapshot)]) == 0
    printed = capsys.readouterr().out
    assert "verdict: the server will load this snapshot" in printed
    (snapshot / "config.json").write_text("{}")
    assert main(["check-snapshot", str(snapshot), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["will_load"] is False
    assert report["findings"][0] == {
        "topic": "config",
        "level": "error",
        "detail": f"{snapshot / 'config.json'}: key 'model_type': expected 'maira2', got None",
    }


def test_a_path_that_is_neither_folder_nor_hub_id_is_a_usage_error(tmp_path, capsys):
    assert main(["check-snapshot", str(tmp_path / "nowhere" / "x" / "y")]) == 2
    assert "neither an existing folder nor a hub id" in capsys.readouterr().err
