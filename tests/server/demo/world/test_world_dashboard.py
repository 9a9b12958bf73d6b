"""The world's shipped dashboards served through GetFeature: the top pacemaker feature's top
studies, its logit effects, its decoder row, fuzzy search, on a real server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from maira_sae.sae.dashboard import Dashboard
from maira_sae.sae.formats import load_sae
from maira_sae.server.demo.layout import SAE_FOLDER
from maira_sae.server.demo.world.dashboard import (
    DASHBOARD_SEED,
    DASHBOARD_STUDIES,
    study_id,
)
from maira_sae.server.demo.world.reports import PACEMAKER
from maira_sae.server.demo.world.studies import world_dataset
from maira_sae.v1 import maira_sae_pb2 as pb

PACEMAKER_FEATURE = 4  # the strongest pacemaker feature (README, measure.py)


@pytest.fixture(scope="module")
def stub(world_stub):
    return world_stub


def test_the_pacemaker_features_top_studies_are_mostly_studies_with_a_pacemaker(stub):
    reply = stub.GetFeature(pb.GetFeatureRequest(feature=PACEMAKER_FEATURE)).feature
    assert reply.has_dashboard and not reply.dashboard_note
    dashboard = reply.dashboard
    assert dashboard.num_studies == DASHBOARD_STUDIES
    studies = world_dataset(DASHBOARD_STUDIES, DASHBOARD_SEED)
    by_id = {study_id(i): study for i, study in enumerate(studies)}
    top = dashboard.top_examples
    assert len(top) == 20 and len({e.study_id for e in top}) == 20  # one example per study
    assert [e.value for e in top] == sorted((e.value for e in top), reverse=True)
    with_pacemaker = sum(PACEMAKER in by_id[e.study_id].concepts for e in top)
    base_rate = sum(PACEMAKER in s.concepts for s in studies) / len(studies)
    print(f"\npacemaker studies among feature 4's top 20: {with_pacemaker}/20 (base {base_rate})")
    assert with_pacemaker / 20 >= 2 * base_rate
    patch = next(e for e in top if e.kind == pb.TOKEN_KIND_IMAGE_PATCH)
    assert patch.thumbnail_png.startswith(b"\x89PNG")
    assert (patch.heatmap.rows, patch.heatmap.cols) == (8, 8)
    assert max(patch.heatmap.values) == pytest.approx(patch.value, rel=1e-2)  # float16 stored
    assert 0 < dashboard.density <= 1 and sum(dashboard.histogram_counts) > 0
    assert len(dashboard.histogram_edges) == len(dashboard.histogram_counts) + 1
    assert [e.quantile for e in dashboard.quantile_examples] == pytest.approx(
        [0.1, 0.25, 0.5, 0.75]
    )


def test_logit_effects_and_the_decoder_row(stub, world_demo):
    reply = stub.GetFeature(
        pb.GetFeatureRequest(feature=PACEMAKER_FEATURE, include_decoder_row=True, num_logits=5)
    ).feature
    assert len(reply.promoted_tokens) == len(reply.suppressed_tokens) == 5
    promoted = [t.logit for t in reply.promoted_tokens]
    assert promoted == sorted(promoted, reverse=True) and promoted[0] > 0
    assert reply.suppressed_tokens[0].logit < 0
    print("\nfeature 4 promotes", [t.text for t in reply.promoted_tokens])
    print("feature 4 suppresses", [t.text for t in reply.suppressed_tokens])
    row = load_sae(world_demo / SAE_FOLDER).W_dec[PACEMAKER_FEATURE].numpy()
    assert np.array_equal(np.asarray(reply.decoder_row, dtype=np.float32), row)
    assert not stub.GetFeature(pb.GetFeatureRequest(feature=PACEMAKER_FEATURE)).feature.decoder_row


def test_num_logits_beyond_the_limit_is_out_of_range(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.GetFeature(pb.GetFeatureRequest(feature=PACEMAKER_FEATURE, num_logits=10_000))
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "num_logits" in error.value.details()


def test_search_ranks_ties_by_score_finds_typos_and_suggests(stub, world_demo):
    exact = stub.SearchFeatures(pb.SearchFeaturesRequest(query="pacemaker", limit=5))
    scores = [m.feature.interpretation_score for m in exact.matches]
    assert scores == sorted(scores, reverse=True)  # equal BM25 scores: by interpretation score
    typo = stub.SearchFeatures(pb.SearchFeaturesRequest(query="pacemakr", limit=5))
    assert [m.feature.feature for m in typo.matches] == [m.feature.feature for m in exact.matches]
    nothing = stub.SearchFeatures(pb.SearchFeaturesRequest(query="zebra"))
    assert not nothing.matches and nothing.suggestions and "nearest labels" in nothing.note


def test_the_shipped_dashboard_matches_the_served_sae(world_demo):
    dashboard = Dashboard.load(world_demo / SAE_FOLDER / "dashboard")
    assert dashboard.d_sae == load_sae(world_demo / SAE_FOLDER).d_sae
    assert dashboard.has_content
