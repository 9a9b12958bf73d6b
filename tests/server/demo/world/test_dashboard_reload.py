"""A dashboard built after the server started is served without a restart: on a real server
with the world model and a copy of its SAE whose dashboard/ is written while it runs; and the
folder's files are loaded at most once per change, with a rebuild in progress keeping the
dashboard already served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest

from maira_sae.sae.dashboard import DEFAULT_FOLDER, METADATA_FILE, Dashboard
from maira_sae.server.demo.layout import SAE_FOLDER
from maira_sae.server.engine.dashboard_source import DashboardSource
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc

FEATURE = 4


@pytest.fixture
def sae_without_dashboard(world_demo: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "sae"
    shutil.copytree(world_demo / SAE_FOLDER, folder, ignore=shutil.ignore_patterns(DEFAULT_FOLDER))
    return folder


def built_dashboard(world_demo: Path) -> Path:
    return world_demo / SAE_FOLDER / DEFAULT_FOLDER


def mark_incomplete(folder: Path) -> None:
    """What a rebuild's first saved state looks like: the metadata says it can resume."""
    path = folder / METADATA_FILE
    metadata = json.loads(path.read_text())
    path.write_text(json.dumps({**metadata, "complete": False}))


@pytest.mark.slow  # starts a server
def test_get_feature_serves_a_dashboard_written_after_the_start(world_demo, sae_without_dashboard):
    from maira_sae.server.demo.layout import MODEL_FOLDER
    from maira_sae.server.demo.random_checkpoint import DemoCheckpoint
    from tests.support.servers import demo_config, running_server

    checkpoint = DemoCheckpoint(world_demo, world_demo / MODEL_FOLDER, sae_without_dashboard, None)
    with (
        running_server(demo_config(checkpoint)) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = pb_grpc.MairaSaeServiceStub(channel)
        before = stub.GetFeature(pb.GetFeatureRequest(feature=FEATURE)).feature
        assert not before.has_dashboard
        assert "build-dashboard into the SAE folder's dashboard/" in before.dashboard_note
        assert "without a restart" in before.dashboard_note

        shutil.copytree(built_dashboard(world_demo), sae_without_dashboard / DEFAULT_FOLDER)
        after = stub.GetFeature(pb.GetFeatureRequest(feature=FEATURE)).feature
        assert after.has_dashboard and not after.dashboard_note
        assert after.dashboard.num_studies == 100

        mark_incomplete(sae_without_dashboard / DEFAULT_FOLDER)  # a rebuild starts
        during = stub.GetFeature(pb.GetFeatureRequest(feature=FEATURE)).feature
        assert during.dashboard == after.dashboard  # the one built before stays served

        shutil.rmtree(sae_without_dashboard / DEFAULT_FOLDER)
        gone = stub.GetFeature(pb.GetFeatureRequest(feature=FEATURE)).feature
        assert not gone.has_dashboard and "has no dashboard" in gone.dashboard_note


def test_the_folder_is_loaded_once_per_change_and_a_bad_one_is_named(
    world_demo, tmp_path, monkeypatch
):
    loads = []
    real_load = Dashboard.load.__func__

    def counted_load(cls, folder):
        loads.append(folder)
        return real_load(cls, folder)

    monkeypatch.setattr(Dashboard, "load", classmethod(counted_load))
    folder = tmp_path / "dashboard"
    d_sae = Dashboard.load(built_dashboard(world_demo)).d_sae
    loads.clear()
    source = DashboardSource("world", folder, d_sae, configured=True)
    with pytest.raises(ValueError, match=r"no dashboard \(dashboard\.json\)"):
        source.load_at_start()  # configured: it must be there
    assert "build-dashboard into saes.dashboard_path" in source.feature(FEATURE)[1]
    assert loads == []  # no files, nothing read

    shutil.copytree(built_dashboard(world_demo), folder)
    mark_incomplete(folder)
    for _ in range(3):
        stats, note = source.feature(FEATURE)
        assert stats is None and "being built or cannot be read" in note
    assert len(loads) == 1  # one failed load for these files, not one per lookup

    shutil.copy(built_dashboard(world_demo) / METADATA_FILE, folder / METADATA_FILE)
    for _ in range(3):
        stats, note = source.feature(FEATURE)
        assert stats is not None and stats.feature == FEATURE and note == ""
    assert len(loads) == 2

    other = DashboardSource("other", folder, d_sae + 1, configured=False)
    with pytest.raises(ValueError, match=rf"dashboard of {d_sae} features; SAE 'other' has"):
        other.load_at_start()
