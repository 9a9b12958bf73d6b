"""Every RPC end to end through a real channel to a real server serving the demo checkpoint."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from maira_sae.server.maira2.grounding import parse_grounded_output
from maira_sae.server.maira2.image_preprocessing import ImageGeometry
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc

SERVICE = "maira_sae.v1.MairaSaeService"


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def demo_study(**texts: str) -> pb.Study:
    image = pb.Image(data=png_bytes(synthetic_chest_image()), media_type=pb.MEDIA_TYPE_PNG)
    return pb.Study(frontal=image, **texts)


@pytest.fixture(scope="module")
def stub(demo_server):
    with grpc.insecure_channel(demo_server.target) as channel:
        yield pb_grpc.MairaSaeServiceStub(channel)


def test_get_info_reports_model_saes_and_limits(stub):
    info = stub.GetInfo(pb.GetInfoRequest())
    assert info.model.num_layers == 16
    assert info.model.image_features == "feature_maps"
    assert info.model.image_tokens_per_image == 1369
    assert (info.model.patch_grid_rows, info.model.patch_grid_cols) == (37, 37)
    assert [sae.id for sae in info.saes] == ["demo-ef4-layer15"]
    assert info.saes[0].layer == 15
    assert info.saes[0].d_model == info.model.hidden_size
    assert sum(info.saes[0].group_sizes) == info.saes[0].d_sae
    assert info.default_sae_id == "demo-ef4-layer15"
    assert info.limits.max_new_tokens > 0 and info.limits.queue_size > 0
    assert info.versions.torch and info.versions.transformers


def test_encode_returns_every_token_with_kinds_and_sparse_codes(stub):
    response = stub.Encode(
        pb.EncodeRequest(
            study=demo_study(indication="Cough."),
            response="No acute findings.",
            top_k_per_token=8,
            token_filter=pb.TokenFilter(),
        )
    )
    kinds = [token.token.kind for token in response.tokens]
    assert kinds.count(pb.TOKEN_KIND_IMAGE_PATCH) == 1369
    assert pb.TOKEN_KIND_PROMPT_TEXT in kinds and pb.TOKEN_KIND_RESPONSE in kinds
    assert pb.TOKEN_KIND_SPECIAL not in kinds  # excluded by the default filter
    assert response.total_tokens > len(response.tokens)
    patch = next(t for t in response.tokens if t.token.kind == pb.TOKEN_KIND_IMAGE_PATCH)
    assert patch.token.HasField("grid_row") and patch.token.image_role == pb.IMAGE_ROLE_FRONTAL
    active = [len(t.feature_ids) for t in response.tokens]
    assert max(active) <= 8 and sum(active) > 0
    for token in response.tokens:
        assert list(token.values) == sorted(token.values, reverse=True)
        assert all(v > 0 for v in token.values)
    assert response.layer == 15
    assert -1.0 <= response.quality.cosine <= 1.0


def test_encode_token_filter_and_matryoshka_level(stub):
    info = stub.GetInfo(pb.GetInfoRequest())
    first_group = info.saes[0].group_sizes[0]
    response = stub.Encode(
        pb.EncodeRequest(
            study=demo_study(),
            token_filter=pb.TokenFilter(kinds=[pb.TOKEN_KIND_PROMPT_TEXT]),
            matryoshka_level=1,
        )
    )
    assert {t.token.kind for t in response.tokens} == {pb.TOKEN_KIND_PROMPT_TEXT}
    assert all(f < first_group for t in response.tokens for f in t.feature_ids)


def test_top_features_with_labels_and_image_grids(stub):
    response = stub.TopFeatures(
        pb.TopFeaturesRequest(study=demo_study(), k=10, aggregation=pb.AGGREGATION_MAX)
    )
    assert 0 < len(response.features) <= 10
    scores = [f.score for f in response.features]
    assert scores == sorted(scores, reverse=True)
    assert any(f.label.startswith("DEMO label") for f in response.features)
    with_grid = [f for f in response.features if f.image_grids]
    assert with_grid, "some top feature should fire on image patches"
    grid = with_grid[0].image_grids[0]
    assert (grid.rows, grid.cols, len(grid.values)) == (37, 37, 1369)
    assert max(grid.values) > 0


def test_top_features_labelled_only_ranks_the_labelled_features_alone(stub):
    every = stub.TopFeatures(pb.TopFeaturesRequest(study=demo_study(), k=100))
    labelled = stub.TopFeatures(pb.TopFeaturesRequest(study=demo_study(), k=8, labelled_only=True))
    assert len(labelled.features) == 8
    assert all(f.HasField("label") for f in labelled.features)
    assert any(not f.HasField("label") for f in every.features), "the ranking must differ"
    expected = [f.feature for f in every.features if f.HasField("label")][:8]
    assert [f.feature for f in labelled.features] == expected


def test_top_features_count_aggregation_counts_tokens(stub):
    response = stub.TopFeatures(
        pb.TopFeaturesRequest(study=demo_study(), k=5, aggregation=pb.AGGREGATION_COUNT)
    )
    for feature in response.features:
        assert feature.score == len(feature.token_positions)


def generate(stub, variants, **settings):
    request = pb.GenerateSteeredRequest(
        study=demo_study(),
        settings=pb.GenerationSettings(
            max_new_tokens=settings.pop("max_new_tokens", 8), **settings
        ),
        variants=variants,
    )
    return list(stub.GenerateSteered(request))


def test_generate_steered_streams_baseline_and_two_variants(stub):
    variants = [
        pb.Variant(name="baseline"),
        pb.Variant(
            name="add",
            interventions=[pb.Intervention(feature=3, mode=pb.STEERING_MODE_ADD, value=60.0)],
        ),
        pb.Variant(
            name="clamp",
            interventions=[pb.Intervention(feature=3, mode=pb.STEERING_MODE_CLAMP, value=40.0)],
        ),
    ]
    events = generate(stub, variants, max_new_tokens=8)
    finished = {e.variant_index: e.finished for e in events if e.WhichOneof("event") == "finished"}
    assert sorted(finished) == [0, 1, 2]
    for index, result in finished.items():
        pieces = [
            e.token.text
            for e in events
            if e.variant_index == index and e.WhichOneof("event") == "token"
        ]
        assert "".join(pieces) == result.text
        assert result.num_tokens == 8
        assert result.finish_reason == pb.FINISH_REASON_LENGTH
    assert finished[1].text != finished[0].text, "a strong ADD must change the report"


def test_baseline_alone_equals_baseline_beside_steered_variants(stub):
    steered = pb.Variant(
        interventions=[pb.Intervention(feature=3, mode=pb.STEERING_MODE_ADD, value=60.0)]
    )
    together = generate(stub, [pb.Variant(), steered], temperature=0.8, seed=7)
    alone = generate(stub, [pb.Variant()], temperature=0.8, seed=7)

    def text(events, index):
        return next(
            e.finished.text
            for e in events
            if e.variant_index == index and e.WhichOneof("event") == "finished"
        )

    assert text(together, 0) == text(alone, 0)


def test_grounded_task_returns_parse_result(stub):
    request = pb.GenerateSteeredRequest(
        study=demo_study(),
        task=pb.Task(kind=pb.TASK_KIND_PHRASE_GROUNDING, phrase="Left pleural effusion."),
        settings=pb.GenerationSettings(max_new_tokens=6),
    )
    events = list(stub.GenerateSteered(request))
    finished = [e.finished for e in events if e.WhichOneof("event") == "finished"]
    assert len(finished) == 1
    assert finished[0].num_tokens == 6
    # Whatever a random model writes, the reply carries the parse of its text on the frontal
    # image's geometry, exactly as the parser gives it (malformed output never fails the call).
    height, width = synthetic_chest_image().shape
    phrases, parse_ok = parse_grounded_output(
        finished[0].text, ImageGeometry.for_size(width, height)
    )
    assert finished[0].parse_ok == parse_ok
    assert [p.text for p in finished[0].phrases] == [p.text for p in phrases]
    assert [len(p.boxes) for p in finished[0].phrases] == [len(p.boxes) for p in phrases]


def test_get_feature_and_search(stub):
    matches = stub.SearchFeatures(pb.SearchFeaturesRequest(query="pacemakers", limit=5)).matches
    assert matches and all("pacemaker" in m.feature.label for m in matches)
    feature = stub.GetFeature(pb.GetFeatureRequest(feature=matches[0].feature.feature)).feature
    assert feature.label == matches[0].feature.label
    assert feature.decoder_norm == pytest.approx(1.0, abs=1e-4)
    # The random demo ships no dashboard: the reply says so, it is not an error.
    assert not feature.has_dashboard and not feature.HasField("dashboard")
    assert (
        "has no dashboard" in feature.dashboard_note and "build-dashboard" in feature.dashboard_note
    )
    assert len(feature.promoted_tokens) == len(feature.suppressed_tokens) == 10


@pytest.mark.parametrize(
    ("request_message", "code"),
    [
        (pb.GetFeatureRequest(feature=10**6), grpc.StatusCode.OUT_OF_RANGE),
        (pb.GetFeatureRequest(sae_id="nope", feature=1), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_feature_lookup_errors(stub, request_message, code):
    with pytest.raises(grpc.RpcError) as error:
        stub.GetFeature(request_message)
    assert error.value.code() == code


def test_bad_requests_get_precise_statuses_and_the_server_keeps_serving(stub):
    cases = [
        (pb.EncodeRequest(), grpc.StatusCode.INVALID_ARGUMENT),  # no frontal image
        (
            pb.EncodeRequest(study=pb.Study(frontal=pb.Image(data=b"not an image"))),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (pb.EncodeRequest(study=demo_study(), sae_id="missing"), grpc.StatusCode.NOT_FOUND),
        (
            pb.EncodeRequest(study=demo_study(), matryoshka_level=99),
            grpc.StatusCode.OUT_OF_RANGE,
        ),
    ]
    for message, code in cases:
        with pytest.raises(grpc.RpcError) as error:
            stub.Encode(message)
        assert error.value.code() == code, error.value.details()
    bad_variant = pb.Variant(
        interventions=[pb.Intervention(feature=10**6, mode=pb.STEERING_MODE_ADD, value=1.0)]
    )
    with pytest.raises(grpc.RpcError) as error:
        generate(stub, [bad_variant])
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "out of range" in error.value.details()
    assert stub.GetInfo(pb.GetInfoRequest()).model.num_layers == 16


def test_health_and_reflection(demo_server):
    with grpc.insecure_channel(demo_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert SERVICE in names and "grpc.health.v1.Health" in names
    with grpc.insecure_channel(f"127.0.0.1:{demo_server.ports.health}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
        assert status == health_pb2.HealthCheckResponse.SERVING
