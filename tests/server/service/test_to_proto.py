"""Domain results -> protobuf responses."""

from __future__ import annotations

import pytest

from maira_sae.sae.catalogue import FeatureInterpretation, Provenance
from maira_sae.server.engine import types as t
from maira_sae.server.engine.schedule import BatchLimits
from maira_sae.server.engine.token_limits import TokenLimits
from maira_sae.server.maira2.study import ImageRole
from maira_sae.server.maira2.tokens import TokenInfo, TokenKind
from maira_sae.server.service import feature_to_proto, to_proto
from maira_sae.server.service.config import DicomConfig, SaeSpec, ServerConfig
from maira_sae.server.service.descriptions import ModelDescription, SaeDescription
from maira_sae.v1 import maira_sae_pb2 as pb

PATCH = TokenInfo(5, 32204, "", TokenKind.IMAGE_PATCH, 1, ImageRole.LATERAL, 0, 36)
TEXT = TokenInfo(9, 1234, "▁eff", TokenKind.PROMPT_TEXT)


def test_encode_result_to_proto():
    result = t.EncodeResult(
        sae_id="f4",
        layer=15,
        tokens=(
            t.TokenFeatures(PATCH, (7, 2), (3.5, 0.25)),
            t.TokenFeatures(TEXT, (), ()),
        ),
        total_tokens=1400,
        quality=t.ReconstructionQuality(mse=0.1, explained_variance=0.8, cosine=0.95),
    )
    msg = to_proto.encode_result_to_proto(result)
    patch, text = msg.tokens
    assert (msg.sae_id, msg.layer, msg.total_tokens) == ("f4", 15, 1400)
    assert patch.token.kind == pb.TOKEN_KIND_IMAGE_PATCH
    assert patch.token.image_role == pb.IMAGE_ROLE_LATERAL
    assert (patch.token.image_index, patch.token.grid_row, patch.token.grid_col) == (1, 0, 36)
    assert patch.token.HasField("grid_row")  # row 0 is a real row
    assert list(patch.feature_ids) == [7, 2]
    assert list(patch.values) == [3.5, 0.25]
    assert text.token.text == "▁eff" and not text.token.HasField("image_index")
    assert text.token.image_role == pb.IMAGE_ROLE_UNSPECIFIED
    assert msg.quality.explained_variance == pytest.approx(0.8)


def test_top_features_result_to_proto():
    grid = t.ImageActivationGrid(image_index=0, rows=2, cols=2, values=(0.0, 1.0, 0.5, 0.0))
    result = t.TopFeaturesResult(
        sae_id="f4",
        layer=15,
        features=(
            t.FeatureScore(12, 4.5, "pacemaker", 0.9, (3, 4), (grid,)),
            t.FeatureScore(13, 1.0, None, None, (), ()),
        ),
        total_tokens=20,
    )
    msg = to_proto.top_features_result_to_proto(result)
    labelled, bare = msg.features
    assert (labelled.feature, labelled.score, labelled.label) == (12, 4.5, "pacemaker")
    assert labelled.interpretation_score == pytest.approx(0.9)
    assert list(labelled.token_positions) == [3, 4]
    assert list(labelled.image_grids[0].values) == [0.0, 1.0, 0.5, 0.0]
    assert not bare.HasField("label") and not bare.HasField("interpretation_score")


def test_generation_events_to_proto():
    token = to_proto.generation_event_to_proto(t.GeneratedToken(2, 4200, 319, " The"))
    assert token.variant_index == 2 and token.WhichOneof("event") == "token"
    assert (token.token.position, token.token.token_id, token.token.text) == (4200, 319, " The")
    box = t.GroundedBox(0.1, 0.2, 0.3, 0.4, 0.15, 0.2, 0.35, 0.4)
    finished = to_proto.generation_event_to_proto(
        t.VariantFinished(
            variant_index=1,
            text="<obj>Effusion</obj>",
            finish_reason=t.FinishReason.LENGTH,
            num_tokens=300,
            phrases=(t.GroundedPhrase("Effusion", (box,)),),
            parse_ok=False,
        )
    )
    result = finished.finished
    assert finished.variant_index == 1 and finished.WhichOneof("event") == "finished"
    assert result.finish_reason == pb.FINISH_REASON_LENGTH
    assert (result.num_tokens, result.parse_ok) == (300, False)
    (phrase,) = result.phrases
    assert phrase.boxes[0].cropped.x_max == pytest.approx(0.3)
    assert phrase.boxes[0].original.x_min == pytest.approx(0.15)


def test_features_to_proto():
    labelled = FeatureInterpretation(feature=4, explanation="sternal wires", score=0.7)
    msg = to_proto.feature_to_proto(t.FeatureDescription(4, labelled, 1.0))
    assert (msg.feature, msg.label, msg.decoder_norm) == (4, "sternal wires", 1.0)
    bare = to_proto.feature_to_proto(t.FeatureDescription(5, None, 0.5))
    assert not bare.HasField("label") and not bare.HasField("interpretation_score")
    search = to_proto.search_response_to_proto(
        t.FeatureSearchResult(
            "f4", (t.FeatureMatch(t.FeatureDescription(4, labelled, 2.0), 3.2, t.MatchKind.EXACT),)
        )
    )
    assert search.sae_id == "f4"
    assert search.matches[0].feature.decoder_norm == 2.0
    assert search.matches[0].score == pytest.approx(3.2)
    assert search.matches[0].kind == pb.MATCH_KIND_EXACT
    assert not search.activation_tokens


def test_search_by_activation_to_proto():
    bare = t.FeatureDescription(9, None, 1.5)
    match = t.FeatureMatch(bare, 4.25, t.MatchKind.ACTIVATION, token_index=2, token_text=" heart")
    search = to_proto.search_response_to_proto(
        t.FeatureSearchResult("f4", (match,), activation_tokens=("<s>", " enlarged", " heart"))
    )
    (got,) = search.matches
    assert (got.feature.feature, got.score, got.kind) == (9, 4.25, pb.MATCH_KIND_ACTIVATION)
    assert (got.token_index, got.token_text) == (2, " heart")
    assert not got.feature.HasField("label")
    assert list(search.activation_tokens) == ["<s>", " enlarged", " heart"]


MODEL = ModelDescription(
    name="microsoft/maira-2",
    path="/models/maira-2",
    dtype="bfloat16",
    device="cuda:0",
    num_layers=32,
    hidden_size=4096,
    image_tokens_per_image=1369,
    patch_grid_rows=37,
    patch_grid_cols=37,
    demo=False,
    image_features="feature_maps",
)


def test_info_to_proto():
    config = ServerConfig(saes=(SaeSpec(id="f4", path="/x"),))
    sae = SaeDescription(
        id="f4",
        layer=15,
        hook_point="block_output",
        d_model=4096,
        d_sae=16384,
        group_sizes=(1024, 3072, 12288),
        num_interpretations=100,
        source_format="dictionary_learning",
    )
    versions = {"maira_sae": "0.1.0", "torch": "2.13", "transformers": "5.24"}
    token_limits = TokenLimits(max_prompt_tokens=4096, max_sequence_tokens=4000)
    decode = BatchLimits(max_rows=12, max_kv_positions=48_000, prefill_token_budget=2048)
    msg = to_proto.info_to_proto(MODEL, [sae], config, versions, token_limits, decode, "f4")
    assert (msg.limits.max_prompt_tokens, msg.limits.max_sequence_tokens) == (4096, 4000)
    # the limits the scheduler runs with (memory-bounded), not the settings asked for
    assert (msg.limits.max_decode_rows, msg.limits.max_kv_positions) == (12, 48_000)
    assert msg.limits.prefill_token_budget == 2048
    assert msg.model.image_tokens_per_image == 1369
    assert msg.saes[0].has_interpretations and list(msg.saes[0].group_sizes) == [1024, 3072, 12288]
    assert msg.default_sae_id == "f4"
    assert msg.limits.max_new_tokens == 1024 and msg.limits.queue_size == 64
    assert msg.limits.max_abs_strength == 1e4
    assert msg.versions.transformers == "5.24"
    assert list(msg.dicom.modalities) == ["CR", "DR", "DX"] and msg.dicom.voi_lut
    assert "VOI LUT or window" in msg.dicom.description


def test_info_reports_the_dicom_settings():
    config = ServerConfig(dicom=DicomConfig(modalities="*", apply_voi=False))
    token_limits = TokenLimits(max_prompt_tokens=4096, max_sequence_tokens=4000)
    msg = to_proto.info_to_proto(MODEL, [], config, {}, token_limits, BatchLimits(), "demo")
    assert msg.default_sae_id == "demo" and not msg.dicom.modalities
    assert not msg.dicom.voi_lut and "no VOI LUT or window" in msg.dicom.description


def test_feature_details_carry_provenance_and_nearest_features():
    provenance = Provenance(
        explainer="offline-contrastive",
        scorer="detection-phrase",
        n_activating=40,
        n_non_activating=0,  # a real zero, not an empty cell
        auroc=0.91,
        created="2026-12-05",
    )
    explained = FeatureInterpretation(4, "pacemaker", 0.91, provenance)
    neighbour = FeatureInterpretation(7, "pacemaker lead", None)
    details = t.FeatureDetails(
        description=t.FeatureDescription(4, explained, 1.0),
        dashboard=None,
        dashboard_note="no dashboard",
        logit_effect=t.LogitEffect((), ()),
        decoder_row=None,
        nearest=(
            t.NearestFeature(t.FeatureDescription(7, neighbour, 1.0), 0.5),
            t.NearestFeature(t.FeatureDescription(2, None, 1.0), -0.25),
        ),
    )
    msg = feature_to_proto.feature_details_to_proto(details)
    assert msg.HasField("provenance")
    got = msg.provenance
    assert (got.explainer, got.explainer_model, got.scorer, got.created) == (
        "offline-contrastive",
        "",
        "detection-phrase",
        "2026-12-05",
    )
    assert (got.num_activating, got.num_non_activating, got.auroc) == (40, 0, 0.91)
    assert got.HasField("num_non_activating")
    assert not got.HasField("balanced_accuracy") and not got.HasField("concept_auroc")
    first, second = msg.nearest_features
    assert (first.feature, first.cosine, first.label) == (7, 0.5, "pacemaker lead")
    assert not first.HasField("interpretation_score")
    assert (second.feature, second.cosine) == (2, -0.25)
    assert not second.HasField("label")


def test_a_label_without_provenance_columns_has_no_provenance():
    plain = FeatureInterpretation(4, "pacemaker", 0.9)
    details = t.FeatureDetails(
        t.FeatureDescription(4, plain, 1.0), None, "", t.LogitEffect((), ()), None
    )
    msg = feature_to_proto.feature_details_to_proto(details)
    assert msg.label == "pacemaker" and not msg.HasField("provenance")
    assert not msg.nearest_features
