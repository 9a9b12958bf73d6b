"""The feature dashboard page: its structure from a built reply (no server, no browser), then
``maira-sae feature N --html`` on the synthetic world, and the films and heat maps of a local
study folder for a dashboard without thumbnails."""

from __future__ import annotations

import base64
import dataclasses
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maira_sae.client import Client, TokenKind, _convert
from maira_sae.client.cli import main
from maira_sae.client.feature_films import StudyFolder, with_heatmaps
from maira_sae.client.feature_page import (
    examples_vmax,
    feature_page_html,
    histogram_svg,
    nice_ticks,
)
from maira_sae.v1 import maira_sae_pb2 as pb
from tests.client.test_feature_details import dashboard_message


class Page(HTMLParser):
    """Every element as (tag, attributes, text inside it up to its first child)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[list[str]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        texts: list[str] = []
        self.elements.append((tag, {k: v or "" for k, v in attrs}, texts))
        self._open.append(texts)

    def handle_endtag(self, tag):
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        for texts in self._open:
            texts.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[tuple[dict[str, str], str]]:
        return [
            (attrs, "".join(texts))
            for t, attrs, texts in self.elements
            if t == tag and (cls is None or cls in attrs.get("class", "").split())
        ]


def png_bytes(side: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(side, dtype=np.uint8) * 7, (side, 1))).save(buffer, "PNG")
    return buffer.getvalue()


def built_feature(thumbnail: bool = True):
    message = dashboard_message()
    image = message.dashboard.top_examples[0]
    if thumbnail:
        image.thumbnail_png = png_bytes()
    else:
        image.ClearField("thumbnail_png")
    return _convert.feature_result(message)


def test_page_structure():
    feature = built_feature()
    page = Page(feature_page_html(feature, sae_id="demo-sae"))
    (h1,) = page.find("h1")
    assert h1[1] == "Feature 7: pacemaker"
    assert "demo-sae" in page.find("p", "sub")[0][1]
    densities = {a["data-density"]: text for a, text in page.find("td") if "data-density" in a}
    assert densities == {"all": "2%", "image_patch": "3%", "response": "1%"}
    bins = page.find("rect", "bin")
    assert [int(a["data-count"]) for a, _ in bins] == [5, 0, 2]
    promoted, suppressed = page.find("table", "up"), page.find("table", "down")
    assert " lead" in promoted[0][1] and " normal" in suppressed[0][1]
    # the top example: a film (the thumbnail) with the heat map, as a decodable PNG
    (film,) = page.find("figure", "film")
    assert film[0]["data-study"] == "s-1" and float(film[0]["data-value"]) == 3.5
    images = [a for a, _ in page.find("img")]
    assert len(images) == 1
    data = images[0]["src"].removeprefix("data:image/png;base64,")
    picture = Image.open(io.BytesIO(base64.b64decode(data)))
    assert picture.mode == "RGB" and picture.width == 400
    # the quantile example: the text token in its context, the example marked
    (example,) = page.find("span", "example")
    assert example[1] == " pacemaker"
    assert len(page.find("svg", "colour-scale")) == 2  # one per example section
    sections = [a["data-examples"] for a, _ in page.find("section", "examples")]
    assert sections == ["1", "1"]


def test_one_scale_for_the_page():
    feature = built_feature()
    assert (
        examples_vmax([*feature.dashboard.top_examples, *feature.dashboard.quantile_examples])
        == 3.5
    )
    page = Page(feature_page_html(feature))
    labels = [a["aria-label"] for a, _ in page.find("svg", "colour-scale")]
    assert labels == ["colour scale, activation 0 to 3.5"] * 2


def test_an_image_example_without_a_film_says_how_to_get_one():
    feature = built_feature(thumbnail=False)
    page = Page(feature_page_html(feature))
    # the heat map alone still draws; without it, the placeholder names --studies
    assert len(page.find("img")) == 1
    dashboard = feature.dashboard
    bare = dataclasses.replace(
        feature,
        dashboard=dataclasses.replace(
            dashboard,
            top_examples=(dataclasses.replace(dashboard.top_examples[0], heatmap=None),),
        ),
    )
    missing = Page(feature_page_html(bare)).find("div", "missing")
    assert len(missing) == 1 and "--studies" in missing[0][1]


def test_the_page_says_where_the_label_came_from_and_lists_the_nearest_features():
    message = dashboard_message()
    message.dashboard.top_examples[0].thumbnail_png = png_bytes()
    message.provenance.CopyFrom(
        pb.InterpretationProvenance(
            explainer="llm",
            explainer_model="qwen-7b",
            scorer="detection-llm",
            num_activating=40,
            num_non_activating=60,
            auroc=0.912,
            balanced_accuracy=0.85,
            created="2026-12-05",
        )
    )
    message.nearest_features.extend(
        [
            pb.NearestFeature(feature=12, cosine=0.61, label="pacemaker <lead>"),
            pb.NearestFeature(feature=3, cosine=-0.2),
        ]
    )
    page = Page(feature_page_html(_convert.feature_result(message)))
    (source,) = page.find("p", "provenance")
    assert source[1] == (
        "Explanation: llm (qwen-7b), scored by detection-llm on 40 activating + 60 "
        "non-activating examples (AUROC 0.912, balanced accuracy 0.850), 2026-12-05"
    )
    (nearest,) = page.find("section", "nearest")
    assert "12+0.610pacemaker <lead>3-0.200" in nearest[1].replace("\n", "")
    plain = Page(feature_page_html(built_feature()))
    assert not plain.find("p", "provenance") and not plain.find("section", "nearest")


def test_without_a_dashboard_the_page_shows_the_note():
    feature = _convert.feature_result(
        pb.Feature(feature=3, decoder_norm=1.0, dashboard_note="no dashboard was built")
    )
    page = Page(feature_page_html(feature))
    assert page.find("p", "no-dashboard")[0][1] == "no dashboard was built"
    assert not page.find("section", "examples")


def test_histogram_of_geometric_bins_is_trimmed_and_logarithmic():
    edges = [0.0, *(10 ** (e / 10) for e in range(-30, 41)), float("inf")]
    counts = [0] * (len(edges) - 1)
    counts[33:37] = [9, 7, 4, 1]  # activations between 1.26 and 3.16
    page = Page(histogram_svg(edges, counts))
    assert [int(a["data-count"]) for a, _ in page.find("rect", "bin")] == [9, 7, 4, 1]
    texts = [text for _, text in page.find("text")]
    assert "activation (log scale)" in texts
    assert "No non-zero" in histogram_svg(edges, [0] * len(counts))


def test_nice_ticks():
    assert nice_ticks(2.92) == [0, 1, 2]
    assert nice_ticks(93) == [0, 20, 40, 60, 80]
    assert nice_ticks(0) == [0]


# -------------------------------------------------------------------------------------------
# On the synthetic world


@pytest.fixture(scope="module")
def world(world_server):
    with Client(world_server.target) as client:
        yield client


@pytest.fixture(scope="module")
def pacemaker(world) -> int:
    return world.search_features("pacemaker", limit=1).matches[0].feature.feature


def test_cli_writes_the_world_pacemaker_page(world_server, pacemaker, tmp_path, capsys):
    page_file = tmp_path / "feature.html"
    argv = ["--target", world_server.target, "feature", str(pacemaker), "--html", str(page_file)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "density" in printed and "promotes" in printed
    page = Page(page_file.read_text(encoding="utf-8"))
    films = page.find("figure", "film")
    assert len(films) >= 10  # the shipped dashboard has thumbnails: every film drawn
    assert len(page.find("img")) == len(films)
    assert page.find("svg", "histogram") and page.find("table", "up")
    (source,) = page.find("p", "provenance")
    assert "concept-annotations, scored by concept-auroc (concept AUROC 0.9" in source[1]
    assert "source    concept-annotations, scored by concept-auroc" in printed
    assert page.find("section", "nearest") and "nearest features by decoder cosine" in printed


@pytest.fixture(scope="module")
def held_out_folder(tmp_path_factory) -> Path:
    """The world dashboard's held-out studies as a local study folder (training's layout)."""
    from maira_sae.server.demo.world.dashboard import DASHBOARD_SEED, DASHBOARD_STUDIES, study_id
    from maira_sae.server.demo.world.studies import world_dataset

    root = tmp_path_factory.mktemp("held-out")
    for index, study in enumerate(world_dataset(DASHBOARD_STUDIES, DASHBOARD_SEED)):
        folder = root / study_id(index)
        folder.mkdir()
        for role in ("frontal", "lateral", "prior"):
            if (pixels := getattr(study, role)) is not None:
                Image.fromarray(pixels).save(folder / f"{role}.png")
        texts = {
            "indication": study.indication,
            "technique": study.technique,
            "comparison": study.comparison,
            "prior_report": study.prior_findings,
            "findings": study.findings,
        }
        for name, text in texts.items():
            if text:
                (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return root


def test_a_study_folder_gives_films_and_heat_maps_the_dashboard_did_not_store(
    world, pacemaker, held_out_folder
):
    stored = world.feature(pacemaker)
    examples = [e for e in stored.dashboard.top_examples if e.kind is TokenKind.IMAGE_PATCH][:4]
    assert examples
    bare = dataclasses.replace(
        stored,
        dashboard=dataclasses.replace(
            stored.dashboard,
            top_examples=tuple(
                dataclasses.replace(e, heatmap=None, thumbnail_png=None) for e in examples
            ),
            quantile_examples=(),
        ),
    )
    folder = StudyFolder(held_out_folder)
    filled = with_heatmaps(world, bare, folder)
    for original, local in zip(examples, filled.dashboard.top_examples, strict=True):
        grid = local.heatmap.to_array()
        # re-encoding the study reproduces the dashboard: its value at the example's patch ...
        assert grid[local.grid_row, local.grid_col] == pytest.approx(original.value, rel=1e-4)
        # ... and its stored heat map (kept at lower precision)
        np.testing.assert_allclose(grid, original.heatmap.to_array(), atol=5e-3)
        assert folder.films(local).ndim == 2
    page = Page(feature_page_html(filled, films=folder.films))
    assert len(page.find("img")) == len(examples) and not page.find("div", "missing")


def test_cli_studies_folder_draws_the_heat_maps_of_lower_quantiles(
    world_server, pacemaker, held_out_folder, tmp_path
):
    """The shipped dashboard stores heat maps for its top examples only; with --studies the
    page gets the lower quantiles' from the server too."""
    page_file = tmp_path / "feature.html"
    argv = ["--target", world_server.target, "feature", str(pacemaker), "--html", str(page_file)]
    assert main([*argv, "--studies", str(held_out_folder)]) == 0
    page = Page(page_file.read_text(encoding="utf-8"))
    captions = [text for _, text in page.find("p", "caption")]
    assert not any("stores no heat maps" in text for text in captions)
    assert main(argv) == 0  # without the folder the page says the quantiles have none
    captions = [
        text for _, text in Page(page_file.read_text(encoding="utf-8")).find("p", "caption")
    ]
    assert any("stores no heat maps" in text for text in captions)
