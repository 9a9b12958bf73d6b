"""GetFeature's dashboard, logit effects and decoder row, search suggestions and TopFeatures'
Matryoshka level in the SDK: conversion of every new message field, then the real servers
(the random demo has no dashboard; the synthetic world ships one)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from maira_sae.client import (
    AsyncClient,
    Client,
    Feature,
    FeatureDashboard,
    ImageGrid,
    TokenKind,
    _convert,
)
from maira_sae.v1 import maira_sae_pb2 as pb

PACEMAKER = "pacemaker"


def dashboard_message() -> pb.Feature:
    """A GetFeature reply with every new field set: one image and one text example."""
    image = pb.FeatureExample(
        study_id="s-1",
        position=40,
        kind=pb.TOKEN_KIND_IMAGE_PATCH,
        value=3.5,
        image_index=0,
        grid_row=2,
        grid_col=1,
        heatmap=pb.ImageGrid(image_index=0, rows=2, cols=2, values=[0, 1.5, 3.5, 0]),
        thumbnail_png=b"\x89PNG fake",
    )
    text = pb.FeatureExample(
        study_id="s-2",
        position=90,
        kind=pb.TOKEN_KIND_RESPONSE,
        value=1.25,
        quantile=0.5,
        context=[
            pb.ContextToken(text=" a", value=0.0),
            pb.ContextToken(text=" pacemaker", value=1.25, is_example=True),
        ],
    )
    return pb.Feature(
        feature=7,
        label="pacemaker",
        interpretation_score=0.9,
        decoder_norm=1.0,
        has_dashboard=True,
        dashboard=pb.FeatureDashboard(
            num_studies=10,
            num_tokens=1000,
            density=0.02,
            density_by_kind=[
                pb.KindDensity(kind=pb.TOKEN_KIND_IMAGE_PATCH, density=0.03),
                pb.KindDensity(kind=pb.TOKEN_KIND_RESPONSE, density=0.01),
            ],
            histogram_edges=[0.0, 1.0, 2.0, 4.0],
            histogram_counts=[5, 0, 2],
            top_examples=[image],
            quantile_examples=[text],
        ),
        promoted_tokens=[pb.TokenLogit(token_id=11, text=" lead", logit=2.5)],
        suppressed_tokens=[pb.TokenLogit(token_id=12, text=" normal", logit=-1.5)],
        decoder_row=[0.5, -0.25, 0.125],
    )


def test_feature_conversion_keeps_every_field():
    feature = _convert.feature_result(dashboard_message())
    dashboard = feature.dashboard
    assert isinstance(dashboard, FeatureDashboard) and feature.has_dashboard
    assert dashboard.density_of(TokenKind.IMAGE_PATCH) == pytest.approx(0.03)
    assert dashboard.density_of(TokenKind.SPECIAL) is None
    assert dashboard.histogram_counts == (5, 0, 2)
    image, text = dashboard.top_examples[0], dashboard.quantile_examples[0]
    assert (image.image_index, image.grid_row, image.grid_col, image.quantile) == (0, 2, 1, None)
    assert isinstance(image.heatmap, ImageGrid)
    assert image.heatmap.to_array().tolist() == [[0, 1.5], [3.5, 0]]
    assert image.thumbnail_png == b"\x89PNG fake"
    assert text.kind is TokenKind.RESPONSE and text.quantile == 0.5
    assert text.image_index is None and text.heatmap is None and text.thumbnail_png is None
    assert [t.is_example for t in text.context] == [False, True]
    assert feature.promoted_tokens[0].text == " lead"
    assert feature.suppressed_tokens[0].logit == -1.5
    row = feature.decoder_row
    assert row is not None and row.dtype == np.float32 and row.tolist() == [0.5, -0.25, 0.125]
    assert not row.flags.writeable
    plain = json.loads(json.dumps(feature.to_dict()))  # arrays and bytes become JSON
    assert plain["decoder_row"] == [0.5, -0.25, 0.125]
    assert plain["dashboard"]["top_examples"][0]["thumbnail_png"] == "iVBORyBmYWtl"


def test_a_search_match_has_no_dashboard_and_no_row():
    feature = _convert.feature_result(pb.Feature(feature=1, decoder_norm=2.0))
    assert feature == Feature(1, None, None, 2.0)
    assert feature.dashboard is None and feature.decoder_row is None


def test_request_fields():
    request = _convert.feature_request(5, "sae", include_decoder_row=True, num_logits=3)
    assert (request.feature, request.sae_id, request.include_decoder_row) == (5, "sae", True)
    assert request.num_logits == 3


# -------------------------------------------------------------------------------------------
# Against the servers


def test_without_a_dashboard_the_reply_says_so(client):
    feature = client.feature(3)
    assert feature.dashboard is None
    assert feature.dashboard_note  # why, and how to build one; not an error


@pytest.fixture(scope="module")
def world(world_server):
    with Client(world_server.target) as client:
        yield client


@pytest.fixture(scope="module")
def pacemaker_feature(world) -> int:
    """The best pacemaker feature: its search ranks it first."""
    return world.search_features(PACEMAKER, limit=1).matches[0].feature.feature


def test_world_dashboard_logits_and_decoder_row(world_server, world, pacemaker_feature):
    from maira_sae.sae.formats import load_sae
    from maira_sae.server.demo.layout import SAE_FOLDER

    feature = world.feature(pacemaker_feature, include_decoder_row=True, num_logits=5)
    dashboard = feature.dashboard
    assert dashboard is not None and dashboard.num_studies > 0
    assert 0 < dashboard.density < 1
    values = [e.value for e in dashboard.top_examples]
    assert values == sorted(values, reverse=True) and values[0] > 0
    assert len(feature.promoted_tokens) == len(feature.suppressed_tokens) == 5
    assert feature.promoted_tokens[0].logit > 0 > feature.suppressed_tokens[0].logit

    sae_dir = world_server.server.config.saes[0].path
    assert sae_dir.name == SAE_FOLDER
    sae_row = load_sae(sae_dir).W_dec[pacemaker_feature].float().numpy()
    assert feature.decoder_row is not None
    np.testing.assert_array_equal(feature.decoder_row, sae_row)
    assert float(np.linalg.norm(sae_row)) == pytest.approx(feature.decoder_norm, rel=1e-5)

    async def same_async():
        async with AsyncClient(world_server.target) as aclient:
            return await aclient.feature(pacemaker_feature, include_decoder_row=True, num_logits=5)

    assert asyncio.run(same_async()) == feature
    assert world.feature(pacemaker_feature).decoder_row is None  # only when asked


def test_search_suggests_when_nothing_matches(world):
    typo = world.search_features("pacemakr", limit=3)
    assert typo.matches and PACEMAKER in (typo.matches[0].feature.label or "")
    nothing = world.search_features("xylophone", limit=3)
    if nothing.matches:
        pytest.skip("the server matched a fuzzy neighbour; nothing to suggest")
    assert nothing.note and nothing.suggestions


def test_top_features_at_a_matryoshka_level(client, study):
    sae = client.info().sae()
    first_group = sae.group_sizes[0]
    top = client.top_features(study, k=10, matryoshka_level=1)
    assert top.features and all(f.feature < first_group for f in top.features)
