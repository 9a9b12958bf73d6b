"""The research pipeline on the world demo, run by the local pipeline runner as the cluster's
Jobs run it: three harvest shard processes fill one store equal, bit for bit, to one process's
harvest, and the SAE trained on it gets dashboards from two shard processes whose merge equals
one process's dashboard, file for file; a harvest killed with SIGKILL resumes and keeps the
shards it finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
import torch
from PIL import Image

from maira_sae.sae.activation_store import StoreReader, open_store, part_manifest_path
from maira_sae.sae.dashboard import DEFAULT_FOLDER, Dashboard, read_metadata
from maira_sae.server.training.pipeline import (
    SERVER_CLI,
    STORE,
    dashboard_part,
    main,
    sae_folder,
)
from maira_sae.server.training.store_harvest import TOKEN_COLUMNS
from tests.reliability._support import wait_until
from tests.support.dashboards import assert_same_dashboard

STUDIES = 6
SHARD_TOKENS = "--shard-tokens=150"  # a few shards per part

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]
# A tiny SAE, trained in a few seconds: the point is the files the steps hand on, not its quality.
TRAIN_OPTIONS = ["--k", "8", "--dict-size", "128", "--steps", "30", "--batch-size", "256"]
TRAIN_OPTIONS += ["--warmup-steps", "5", "--threshold-start-step", "10"]
DASHBOARD_OPTIONS = ["--device=cpu", "--batch=2", "--top-k=3", "--thumbnails"]


@pytest.fixture(scope="module")
def world_model(tmp_path_factory) -> str:
    from maira_sae.server.demo.layout import MODEL_FOLDER
    from maira_sae.server.demo.world.materialise import ensure_world_demo

    return str(ensure_world_demo(tmp_path_factory.mktemp("world") / "demo") / MODEL_FOLDER)


@pytest.fixture(scope="module")
def world_studies(tmp_path_factory):
    """Held-out world studies as a study folder (images as PNG, the findings teacher-forced)."""
    from maira_sae.server.demo.world.measure import HELD_OUT_SEED
    from maira_sae.server.demo.world.studies import world_dataset

    root = tmp_path_factory.mktemp("world-studies")
    for index, study in enumerate(world_dataset(STUDIES, HELD_OUT_SEED)):
        folder = root / f"study-{index:03d}"
        folder.mkdir()
        for role in ("frontal", "lateral", "prior"):
            image = getattr(study, role)
            if image is not None:
                Image.fromarray(image).save(folder / f"{role}.png")
        texts = {
            "findings": study.findings,
            "indication": study.indication,
            "technique": study.technique,
            "comparison": study.comparison,
            "prior_report": study.prior_findings,
        }
        for name, text in texts.items():
            if text:
                (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return root


def harvest_argv(model: str, studies, store, shard: str) -> list[str]:
    return [
        *SERVER_CLI,
        "harvest",
        *("--model", model, "--studies", str(studies), "--out", str(store)),
        *("--shard", shard, "--device", "cpu", "--harvest-batch", "1", "--drop-boilerplate"),
        SHARD_TOKENS,
    ]


@pytest.fixture(scope="module")
def single_process_store(world_model, world_studies, tmp_path_factory):
    store = tmp_path_factory.mktemp("single") / "store"
    subprocess.run(harvest_argv(world_model, world_studies, store, "0/1"), check=True)
    return store


def assert_same_store(store, reference) -> None:
    ours, theirs = StoreReader(store), StoreReader(reference)
    assert len(ours) == len(theirs) > 0
    assert ours.dtype == theirs.dtype and ours.d_model == theirs.d_model
    assert torch.equal(ours.read(0, len(ours)), theirs.read(0, len(theirs)))
    for column in TOKEN_COLUMNS:
        assert torch.equal(ours.read(0, len(ours), column), theirs.read(0, len(theirs), column))
    assert ours.manifest.settings == theirs.manifest.settings


@pytest.mark.timeout(900)  # nine processes one after another; each loads torch and the model
def test_three_harvest_shards_and_two_dashboard_shards_equal_one_process(
    world_model, world_studies, single_process_store, tmp_path
):
    options = ["--harvest-option=--device=cpu", "--harvest-option=--drop-boilerplate"]
    options += ["--harvest-option=--harvest-batch=1", f"--harvest-option={SHARD_TOKENS}"]
    options += [f"--dashboard-option={option}" for option in DASHBOARD_OPTIONS]
    argv = ["--local", "--shards", "3", "--dashboard-shards", "2", "--parallel", "2"]
    argv += ["--model", world_model, "--studies", str(world_studies), "--work", str(tmp_path)]
    assert main([*argv, "--until", "dashboards", *options, "--", *TRAIN_OPTIONS]) == 0
    manifest = open_store(tmp_path / STORE)
    assert manifest.complete and manifest.num_items == STUDIES
    parts = [json.loads(part_manifest_path(tmp_path / STORE, i, 3).read_text()) for i in range(3)]
    assert [part["items"] for part in parts] == [[0, 2], [2, 4], [4, 6]]
    assert_same_store(tmp_path / STORE, single_process_store)
    study_index = StoreReader(tmp_path / STORE).read(0, manifest.rows, "study_index")
    assert study_index.unique().tolist() == list(range(STUDIES))

    shards = [read_metadata(dashboard_part(tmp_path, i))["shard"]["studies"] for i in range(2)]
    assert shards == [[0, 2], [2, 6]]  # whole batches of 2: 3 batches split 1 + 2
    single = tmp_path / "single-dashboard"
    argv = ["build-dashboard", "--model", world_model, "--sae", str(sae_folder(tmp_path))]
    argv += ["--studies", str(world_studies), "--out", str(single), *DASHBOARD_OPTIONS]
    subprocess.run([*SERVER_CLI, *argv], check=True, stderr=subprocess.DEVNULL)
    assert_same_dashboard(sae_folder(tmp_path) / DEFAULT_FOLDER, single)
    assert Dashboard.load(single).feature(0).num_studies == STUDIES


def test_a_killed_harvest_resumes_and_keeps_its_finished_shards(
    world_model, world_studies, single_process_store, tmp_path
):
    store = tmp_path / "store"
    part = part_manifest_path(store, 0, 1)

    def finished_shards() -> int:
        return len(json.loads(part.read_text())["shards"]) if part.is_file() else 0

    argv = harvest_argv(world_model, world_studies, store, "0/1")
    process = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: finished_shards() >= 1, timeout_s=300, what="a first shard")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    killed = json.loads(part.read_text())
    assert not killed["complete"], "the harvest finished before the kill; make it longer"
    kept = len(killed["shards"])

    rerun = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert f"kept {kept} completed shard(s)" in rerun.stderr
    first_redone = killed["shards"][-1]["end_item"]
    harvested = [line for line in rerun.stderr.splitlines() if line.startswith("harvested study")]
    assert harvested[0].startswith(f"harvested study {first_redone + 1} of")
    assert_same_store(store, single_process_store)

    again = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert "part 0/1 is complete" in again.stderr and "harvested study" not in again.stderr


def test_the_runner_checks_its_arguments():
    with pytest.raises(SystemExit, match="--shards, --dashboard-shards, --explain-shards"):
        main(["--local", "--shards", "0", "--model", "m", "--studies", "s", "--work", "w"])
