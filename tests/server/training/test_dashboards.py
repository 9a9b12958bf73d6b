"""Dashboards built through the server's hooks: their statistics equal what Encode reports,
a resumed build equals an uninterrupted one, content is stored only when asked, and the
server serves what build-dashboard writes."""

from __future__ import annotations

import shutil
import stat
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from maira_sae.sae.dashboard import METADATA_FILE, TENSORS_FILE, Dashboard, read_metadata
from maira_sae.sae.file_modes import current_umask
from maira_sae.server.cli import main
from maira_sae.server.engine.types import EncodeRequest
from maira_sae.server.maira2.study import Study
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image
from maira_sae.server.service.config import SaeSpec
from maira_sae.server.service.metrics import Metrics
from maira_sae.server.service.runtime import load_runtime
from maira_sae.server.training.dashboards import (
    DashboardSettings,
    DashboardStudy,
    build_dashboard,
    merge_dashboards,
)
from tests.support.dashboards import assert_same_dashboard
from tests.support.servers import demo_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPORTS = ("Left pleural effusion.", None, "No acute findings.", None, "Pacemaker in place.")


@pytest.fixture(scope="module")
def engine(demo_checkpoint):
    return load_runtime(demo_config(demo_checkpoint), Metrics()).engine


@pytest.fixture(scope="module")
def studies() -> list[DashboardStudy]:
    image = synthetic_chest_image()
    films = [image, np.flipud(image).copy(), np.fliplr(image).copy(), image.T.copy(), image // 2]
    return [
        DashboardStudy(f"s{i}", Study(frontal=film, indication="Cough."), report)
        for i, (film, report) in enumerate(zip(films, REPORTS, strict=True))
    ]


def build(engine, studies, out, shard=None, **settings):
    entry = engine.sae("")
    return build_dashboard(
        engine.model,
        engine.processor,
        entry.sae,
        entry.layer,
        studies,
        out,
        DashboardSettings(top_k=3, sample_size=8, **settings),
        shard=shard,
        progress=False,
    )


@pytest.fixture(scope="module")
def dashboard(engine, studies, tmp_path_factory) -> Dashboard:
    return Dashboard.load(build(engine, studies, tmp_path_factory.mktemp("d") / "dashboard"))


def encoded(engine, study: DashboardStudy):
    request = EncodeRequest(study=study.study, response=study.report, top_k_per_token=0)
    (result,) = engine.analyse([engine.prepare_analysis(request)])
    return result


def test_density_and_top_studies_equal_what_encode_reports(engine, studies, dashboard):
    firing: dict[tuple[int, str], int] = defaultdict(int)
    tokens: dict[str, int] = defaultdict(int)
    peak: dict[int, list[tuple[float, str, int]]] = defaultdict(list)
    for study in studies:
        best: dict[int, tuple[float, int]] = {}
        for token in encoded(engine, study).tokens:
            tokens[token.token.kind.value] += 1
            for feature, value in zip(token.feature_ids, token.values, strict=True):
                firing[feature, token.token.kind.value] += 1
                if value > best.get(feature, (0.0, -1))[0]:
                    best[feature] = (value, token.token.position)
        for feature, (value, position) in best.items():
            peak[feature].append((value, study.study_id, position))
    assert dashboard.metadata["tokens_by_kind"] == dict(tokens)
    for feature in (0, 7, 100, 255):
        stats = dashboard.feature(feature)
        for kind, density in stats.density_by_kind.items():
            assert density == pytest.approx(firing[feature, kind] / tokens[kind])
        assert sum(stats.histogram_counts) == sum(firing[feature, k] for k in tokens)
        expected = sorted(peak[feature], reverse=True)[:3]
        got = stats.top_examples
        assert [e.value for e in got] == pytest.approx([v for v, _, _ in expected], rel=1e-5)
        assert len({e.study_id for e in got}) == len(got)  # one example per study
        for example in got:  # each is its study's peak (tokens before the image tie)
            peak_value = next(v for v, s, _ in peak[feature] if s == example.study_id)
            assert example.value == pytest.approx(peak_value, rel=1e-5)


def test_by_default_no_pixels_or_text_are_stored(dashboard):
    example = dashboard.feature(7).top_examples[0]
    assert example.heatmap is None and example.thumbnail is None and example.context == ()
    assert not dashboard.has_content


def test_content_is_stored_when_asked(engine, studies, tmp_path):
    with_content = Dashboard.load(build(engine, studies[:2], tmp_path / "d", with_content=True))
    patch = next(
        e
        for f in range(with_content.d_sae)
        for e in with_content.feature(f).top_examples
        if e.image_index is not None
    )
    assert patch.heatmap.shape == (37, 37) and patch.thumbnail.shape == (128, 128)
    assert patch.heatmap[patch.grid_row, patch.grid_col] == pytest.approx(patch.value, rel=1e-2)
    text = next(
        e
        for f in range(with_content.d_sae)
        for e in with_content.feature(f).top_examples
        if e.image_index is None
    )
    assert len([c for c in text.context if c[2]]) == 1


def test_a_resumed_build_equals_an_uninterrupted_one(engine, studies, tmp_path):
    class Crashing(list):
        def __getitem__(self, index):
            if index == 3:
                raise KeyboardInterrupt
            return super().__getitem__(index)

    out = tmp_path / "dashboard"
    with pytest.raises(KeyboardInterrupt):
        build(engine, Crashing(studies), out, save_every=2, batch_size=1)
    assert read_metadata(out)["studies_done"] == 2 and not read_metadata(out)["complete"]
    build(engine, studies, out, save_every=2, batch_size=1)
    assert not [name for name in load_file(str(out / TENSORS_FILE)) if name.startswith("sample")]
    resumed = Dashboard.load(out)
    clean = Dashboard.load(build(engine, studies, tmp_path / "clean", batch_size=1))
    for feature in range(resumed.d_sae):
        assert resumed.feature(feature) == clean.feature(feature)


def test_a_folder_of_another_build_is_refused(engine, studies, tmp_path):
    out = build(engine, studies[:2], tmp_path / "dashboard")
    with pytest.raises(ValueError, match="holds a dashboard of another SAE, study set"):
        build(engine, studies[:3], out)


def test_an_incomplete_or_foreign_file_does_not_load(engine, studies, tmp_path):
    out = build(engine, studies[:2], tmp_path / "dashboard")
    text = (out / METADATA_FILE).read_text()
    (out / METADATA_FILE).write_text(text.replace('"complete": true', '"complete": false'))
    with pytest.raises(ValueError, match="incomplete; resume it"):
        Dashboard.load(out)
    (out / METADATA_FILE).write_text(text.replace('"version": 1', '"version": 9'))
    with pytest.raises(ValueError, match="version 9; this reads 1"):
        Dashboard.load(out)


def test_build_dashboard_command_writes_what_the_server_serves(demo_checkpoint, tmp_path):
    studies = tmp_path / "studies"
    for name in ("a", "b"):
        (studies / name).mkdir(parents=True)
        Image.fromarray(synthetic_chest_image()).save(studies / name / "frontal.png")
    sae = shutil.copytree(demo_checkpoint.sae_dir, tmp_path / "sae")
    argv = ["build-dashboard", "--model", str(demo_checkpoint.model_dir), "--sae", str(sae)]
    assert main([*argv, "--studies", str(studies), "--device", "cpu"]) == 0
    config = replace(demo_config(demo_checkpoint), saes=(SaeSpec(id="demo", path=sae),))
    engine = load_runtime(config, Metrics()).engine  # finds the SAE folder's dashboard/
    details = engine.feature("", 3)
    assert details.dashboard is not None and details.dashboard.num_studies == 2
    assert {e.study_id for e in details.dashboard.top_examples} <= {"a", "b"}


@pytest.mark.parametrize("shards", [1, 3])
def test_merged_shards_equal_one_process_with_content(engine, studies, tmp_path, shards):
    single = build(engine, studies, tmp_path / "single", with_content=True, batch_size=2)
    parts = [
        build(
            engine,
            studies,
            tmp_path / f"part-{index}",
            with_content=True,
            batch_size=2,
            shard=(index, shards),
        )
        for index in reversed(range(shards))  # the order the shards finish in does not matter
    ]
    covered = [read_metadata(part)["shard"]["studies"] for part in reversed(parts)]
    assert covered == ([[0, 5]] if shards == 1 else [[0, 2], [2, 4], [4, 5]])  # whole batches
    with pytest.raises(ValueError, match="partial dashboard of shard"):
        Dashboard.load(parts[0])
    merged = merge_dashboards(parts, tmp_path / "merged")
    assert_same_dashboard(merged, single)
    for name in (METADATA_FILE, TENSORS_FILE):  # group-readable, as the serving pods need
        assert stat.S_IMODE((merged / name).stat().st_mode) == 0o666 & ~current_umask()
        assert stat.S_IMODE((parts[0] / name).stat().st_mode) == 0o666 & ~current_umask()


def test_the_merge_refuses_missing_unfinished_or_foreign_partials(engine, studies, tmp_path):
    def part(index, count, chosen=studies, **settings):
        out = tmp_path / f"{len(chosen)}-{index}-of-{count}-{len(settings)}"
        return build(engine, chosen, out, batch_size=1, shard=(index, count), **settings)

    first, second = part(0, 2), part(1, 2)
    with pytest.raises(ValueError, match=r"each of the 2 shards once: missing \[1\]"):
        merge_dashboards([first], tmp_path / "out")
    with pytest.raises(ValueError, match=r"given twice \[0\]"):
        merge_dashboards([first, first, second], tmp_path / "out")
    with pytest.raises(ValueError, match="a partial of another SAE, study set or settings"):
        merge_dashboards([first, part(1, 2, context=2)], tmp_path / "out")
    with pytest.raises(ValueError, match="splits into different numbers of shards"):
        merge_dashboards([first, part(1, 3)], tmp_path / "out")
    text = (second / METADATA_FILE).read_text()
    (second / METADATA_FILE).write_text(text.replace('"complete": true', '"complete": false'))
    with pytest.raises(ValueError, match=r"shard 1/2 is incomplete .* --shard 1/2"):
        merge_dashboards([first, second], tmp_path / "out")
    whole = build(engine, studies, tmp_path / "whole")
    with pytest.raises(ValueError, match="a whole dashboard, not a shard's partial one"):
        merge_dashboards([whole], tmp_path / "out")
    assert not (tmp_path / "out").exists()
