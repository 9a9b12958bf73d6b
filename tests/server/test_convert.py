"""Protobuf <-> domain conversions: round trips, defaults, and every validation's code and words."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maira_sae.client.images import ImageDecodeError, MediaType
from maira_sae.sae.catalogue import FeatureInterpretation
from maira_sae.sae.interventions import SteeringMode
from maira_sae.server import convert, to_proto
from maira_sae.server.config import LimitsConfig, SaeSpec, ServerConfig
from maira_sae.server.engine import types as t
from maira_sae.server.errors import InvalidArgument, OutOfRange
from maira_sae.server.maira2.study import ImageRole, TaskKind
from maira_sae.server.maira2.tokens import TokenInfo, TokenKind
from maira_sae.v1 import maira_sae_pb2 as pb

LIMITS = LimitsConfig()
PNG = pb.Image(data=b"\x89PNG-bytes", media_type=pb.MEDIA_TYPE_PNG)


class FakeDecoder:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, MediaType | None, str]] = []

    def __call__(self, data: bytes, media_type: MediaType | None, name: str) -> np.ndarray:
        self.calls.append((data, media_type, name))
        if data == b"corrupt":
            raise ImageDecodeError(name, "not a PNG file")
        return np.full((4, 4), len(self.calls), dtype=np.uint16)


def study(**fields) -> pb.Study:
    return pb.Study(frontal=PNG, **fields)


def generate(**fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(**{"study": study(), **fields})


def feature_edit(**fields) -> pb.Intervention:
    return pb.Intervention(**{"feature": 3, "mode": pb.STEERING_MODE_ADD, "value": 2.0, **fields})


# -------------------------------------------------------------------------------------------
# Requests


def test_study_round_trip_keeps_absent_apart_from_empty():
    decode = FakeDecoder()
    msg = pb.Study(
        frontal=PNG,
        prior=pb.Image(data=b"dicom", media_type=pb.MEDIA_TYPE_DICOM),
        lateral=pb.Image(data=b"sniff me"),
        indication="dyspnoea",
        comparison="",
    )
    domain = convert.study_from_proto(msg, LIMITS, decode)
    assert [c[1:] for c in decode.calls] == [
        (MediaType.PNG, "study.frontal"),
        (None, "study.lateral"),
        (MediaType.DICOM, "study.prior"),
    ]
    assert domain.frontal[0, 0] == 1 and domain.lateral[0, 0] == 2 and domain.prior[0, 0] == 3
    assert domain.indication == "dyspnoea"
    assert domain.comparison == ""  # present but empty
    assert domain.technique is None and domain.prior_report is None  # absent: "N/A"


def test_encode_request_defaults():
    request = convert.encode_request_from_proto(
        pb.EncodeRequest(study=study()), LIMITS, FakeDecoder()
    )
    assert request.task == t.Task()
    assert request.response is None
    assert request.sae_id == ""
    assert request.token_filter == t.TokenFilter()
    assert request.top_k_per_token == 0  # every active feature
    assert request.matryoshka_level is None


def test_encode_request_round_trip():
    msg = pb.EncodeRequest(
        study=study(),
        task=pb.Task(kind=pb.TASK_KIND_PHRASE_GROUNDING, phrase="left effusion"),
        response="",
        sae_id="f4",
        token_filter=pb.TokenFilter(
            kinds=[pb.TOKEN_KIND_IMAGE_PATCH, pb.TOKEN_KIND_RESPONSE],
            image_indices=[0],
            ranges=[pb.TokenRange(start=2, end=9)],
        ),
        top_k_per_token=16,
        matryoshka_level=2,
    )
    request = convert.encode_request_from_proto(msg, LIMITS, FakeDecoder())
    assert request.task == t.Task(TaskKind.PHRASE_GROUNDING, "left effusion")
    assert request.response == ""
    assert request.sae_id == "f4"
    assert request.token_filter == t.TokenFilter(
        kinds=frozenset({TokenKind.IMAGE_PATCH, TokenKind.RESPONSE}),
        image_indices=frozenset({0}),
        ranges=(t.TokenRange(2, 9),),
    )
    assert (request.top_k_per_token, request.matryoshka_level) == (16, 2)


def test_top_features_request_defaults_and_values():
    default = convert.top_features_request_from_proto(
        pb.TopFeaturesRequest(study=study()), LIMITS, FakeDecoder()
    )
    assert (default.aggregation, default.k) == (t.Aggregation.MAX, convert.DEFAULT_TOP_K)
    chosen = convert.top_features_request_from_proto(
        pb.TopFeaturesRequest(study=study(), aggregation=pb.AGGREGATION_COUNT, k=5),
        LIMITS,
        FakeDecoder(),
    )
    assert (chosen.aggregation, chosen.k) == (t.Aggregation.COUNT, 5)


def test_generate_request_defaults_to_one_baseline():
    request = convert.generate_request_from_proto(generate(), LIMITS, FakeDecoder())
    assert request.variants == (t.Variant(),)
    assert request.settings == t.GenerationSettings(
        max_new_tokens=LIMITS.default_max_new_tokens, temperature=0.0, top_p=1.0, seed=0
    )


def test_generate_request_round_trip():
    msg = generate(
        settings=pb.GenerationSettings(max_new_tokens=50, temperature=0.7, top_p=0.9, seed=2**63),
        variants=[
            pb.Variant(name="baseline"),
            pb.Variant(
                name="steered",
                interventions=[
                    feature_edit(scope=pb.POSITION_SCOPE_GENERATED),
                    pb.Intervention(
                        direction=pb.Direction(values=[3.0, 4.0]),
                        mode=pb.STEERING_MODE_CLAMP,
                        value=-1.5,
                        scope=pb.POSITION_SCOPE_RANGES,
                        ranges=[pb.TokenRange(start=0, end=4)],
                    ),
                    pb.Intervention(feature=0, mode=pb.STEERING_MODE_ABLATE),
                ],
            ),
        ],
    )
    request = convert.generate_request_from_proto(msg, LIMITS, FakeDecoder())
    assert request.settings == t.GenerationSettings(50, 0.7, 0.9, 2**63)
    baseline, steered = request.variants
    assert baseline == t.Variant(name="baseline")
    add, clamp, ablate = steered.interventions
    assert (add.intervention.mode, add.intervention.feature, add.intervention.value) == (
        SteeringMode.ADD,
        3,
        2.0,
    )
    assert add.scope is t.PositionScope.GENERATED
    assert clamp.intervention.mode is SteeringMode.CLAMP
    assert torch.equal(clamp.intervention.direction, torch.tensor([3.0, 4.0]))
    assert (clamp.scope, clamp.ranges) == (t.PositionScope.RANGES, (t.TokenRange(0, 4),))
    assert ablate.intervention.feature == 0  # index 0 is a real feature, not "unset"
    assert ablate.scope is t.PositionScope.ALL  # UNSPECIFIED means ALL


def test_search_query():
    query = convert.search_query_from_proto(pb.SearchFeaturesRequest(query="pacemaker"), LIMITS)
    assert query == convert.SearchQuery("", "pacemaker", convert.DEFAULT_TOP_K)


TOO_LONG = "x" * (LIMITS.max_text_chars + 1)

# (what to convert, error, words the message must hold)
INVALID_CASES = {
    "no frontal": (pb.GenerateRequest(), InvalidArgument, "study.frontal is required"),
    "empty image": (
        pb.GenerateRequest(study=pb.Study(frontal=pb.Image())),
        InvalidArgument,
        "study.frontal.data is empty",
    ),
    "image too big": (
        pb.GenerateRequest(study=study(lateral=pb.Image(data=b"x" * (LIMITS.max_image_bytes + 1)))),
        OutOfRange,
        f"study.lateral.data is {LIMITS.max_image_bytes + 1} bytes, over limits.max_image_bytes",
    ),
    "unknown media type": (
        pb.GenerateRequest(study=study(prior=pb.Image(data=b"x", media_type=9))),
        InvalidArgument,
        "study.prior.media_type has unknown value 9",
    ),
    "undecodable image": (
        pb.GenerateRequest(study=pb.Study(frontal=pb.Image(data=b"corrupt"))),
        InvalidArgument,
        "study.frontal: not a PNG file",
    ),
    "long text": (
        generate(study=study(indication=TOO_LONG)),
        OutOfRange,
        f"study.indication has {len(TOO_LONG)} characters, over limits.max_text_chars = 4000",
    ),
    "NUL in text": (
        generate(study=study(prior_report="a\x00b")),
        InvalidArgument,
        "study.prior_report contains a NUL character",
    ),
    "unknown task": (
        generate(task=pb.Task(kind=7)),
        InvalidArgument,
        "task.kind has unknown value 7",
    ),
    "grounding without phrase": (
        generate(task=pb.Task(kind=pb.TASK_KIND_PHRASE_GROUNDING, phrase="  ")),
        InvalidArgument,
        "task.phrase is required for TASK_KIND_PHRASE_GROUNDING",
    ),
    "phrase without grounding": (
        generate(task=pb.Task(phrase="effusion")),
        InvalidArgument,
        "task.phrase is only used by TASK_KIND_PHRASE_GROUNDING",
    ),
    "max_new_tokens": (
        generate(settings=pb.GenerationSettings(max_new_tokens=5000)),
        OutOfRange,
        "settings.max_new_tokens is 5000, over limits.max_new_tokens = 1024",
    ),
    "NaN temperature": (
        generate(settings=pb.GenerationSettings(temperature=math.nan)),
        InvalidArgument,
        "settings.temperature must be a finite number, got nan",
    ),
    "negative temperature": (
        generate(settings=pb.GenerationSettings(temperature=-0.1)),
        OutOfRange,
        "settings.temperature must be >= 0",
    ),
    "infinite top_p": (
        generate(settings=pb.GenerationSettings(top_p=math.inf)),
        InvalidArgument,
        "settings.top_p must be a finite number, got inf",
    ),
    "top_p above 1": (
        generate(settings=pb.GenerationSettings(top_p=1.5)),
        OutOfRange,
        "settings.top_p must be in (0, 1] (0 means 1.0), got 1.5",
    ),
    "too many variants": (
        generate(variants=[pb.Variant()] * 9),
        OutOfRange,
        "the number of variants is 9, over limits.max_variants = 8",
    ),
    "too many interventions": (
        generate(variants=[pb.Variant(interventions=[feature_edit()] * 17)]),
        OutOfRange,
        "the number of variants[0].interventions is 17, over limits.max_interventions_per_variant",
    ),
    "mode unspecified": (
        generate(variants=[pb.Variant(), pb.Variant(interventions=[pb.Intervention(feature=1)])]),
        InvalidArgument,
        "variants[1].interventions[0].mode must be set",
    ),
    "unknown mode": (
        generate(variants=[pb.Variant(interventions=[feature_edit(mode=12)])]),
        InvalidArgument,
        "variants[0].interventions[0].mode has unknown value 12",
    ),
    "no target": (
        generate(variants=[pb.Variant(interventions=[pb.Intervention(mode=1)])]),
        InvalidArgument,
        "variants[0].interventions[0] needs a target: set feature or direction",
    ),
    "NaN value": (
        generate(variants=[pb.Variant(interventions=[feature_edit(value=math.nan)])]),
        InvalidArgument,
        "variants[0].interventions[0].value must be a finite number",
    ),
    "strength": (
        generate(variants=[pb.Variant(interventions=[feature_edit(value=-2e4)])]),
        OutOfRange,
        "variants[0].interventions[0].value is -20000.0, over limits.max_abs_strength = 10000.0",
    ),
    "NaN direction": (
        generate(
            variants=[
                pb.Variant(
                    interventions=[
                        pb.Intervention(direction=pb.Direction(values=[1.0, math.nan]), mode=1)
                    ]
                )
            ]
        ),
        InvalidArgument,
        "variants[0].interventions[0].direction.values must all be finite",
    ),
    "zero direction": (
        generate(
            variants=[
                pb.Variant(
                    interventions=[pb.Intervention(direction=pb.Direction(values=[0]), mode=1)]
                )
            ]
        ),
        InvalidArgument,
        "direction.values is all zeros",
    ),
    "empty direction": (
        generate(
            variants=[pb.Variant(interventions=[pb.Intervention(direction=pb.Direction(), mode=1)])]
        ),
        InvalidArgument,
        "direction.values is empty",
    ),
    "ranges without RANGES": (
        generate(
            variants=[pb.Variant(interventions=[feature_edit(ranges=[pb.TokenRange(end=2)])])]
        ),
        InvalidArgument,
        "variants[0].interventions[0].ranges must be set exactly when scope is",
    ),
    "RANGES without ranges": (
        generate(
            variants=[pb.Variant(interventions=[feature_edit(scope=pb.POSITION_SCOPE_RANGES)])]
        ),
        InvalidArgument,
        "ranges must be set exactly when scope is POSITION_SCOPE_RANGES",
    ),
    "empty range": (
        generate(
            variants=[
                pb.Variant(
                    interventions=[
                        feature_edit(
                            scope=pb.POSITION_SCOPE_RANGES,
                            ranges=[pb.TokenRange(start=5, end=5)],
                        )
                    ]
                )
            ]
        ),
        InvalidArgument,
        "variants[0].interventions[0].ranges[0] is empty: start 5 must be below end 5",
    ),
    "per-token top-k": (
        pb.EncodeRequest(study=study(), top_k_per_token=257),
        OutOfRange,
        "top_k_per_token is 257, over limits.max_top_k = 256",
    ),
    "filter kind unspecified": (
        pb.EncodeRequest(study=study(), token_filter=pb.TokenFilter(kinds=[0])),
        InvalidArgument,
        "token_filter.kinds[0] must be set",
    ),
    "filter image index": (
        pb.EncodeRequest(study=study(), token_filter=pb.TokenFilter(image_indices=[0, 3])),
        OutOfRange,
        "token_filter.image_indices[1] is 3; images are numbered 0..2",
    ),
    "long response": (
        pb.EncodeRequest(study=study(), response=TOO_LONG),
        OutOfRange,
        "response has 4001 characters",
    ),
    "top-k": (
        pb.TopFeaturesRequest(study=study(), k=1000),
        OutOfRange,
        "k is 1000, over limits.max_top_k = 256",
    ),
    "unknown aggregation": (
        pb.TopFeaturesRequest(study=study(), aggregation=8),
        InvalidArgument,
        "aggregation has unknown value 8",
    ),
    "empty query": (
        pb.SearchFeaturesRequest(query=" "),
        InvalidArgument,
        "query is required",
    ),
    "search limit": (
        pb.SearchFeaturesRequest(query="line", limit=300),
        OutOfRange,
        "limit is 300, over limits.max_top_k = 256",
    ),
}


def from_proto(msg):
    decode = FakeDecoder()
    if isinstance(msg, pb.GenerateRequest):
        return convert.generate_request_from_proto(msg, LIMITS, decode)
    if isinstance(msg, pb.EncodeRequest):
        return convert.encode_request_from_proto(msg, LIMITS, decode)
    if isinstance(msg, pb.TopFeaturesRequest):
        return convert.top_features_request_from_proto(msg, LIMITS, decode)
    return convert.search_query_from_proto(msg, LIMITS)


@pytest.mark.parametrize("case", list(INVALID_CASES))
def test_validation_error(case):
    msg, error, words = INVALID_CASES[case]
    with pytest.raises(error) as info:
        from_proto(msg)
    assert type(info.value) is error
    assert words in str(info.value)


def test_cheap_checks_run_before_any_image_is_decoded():
    decode = FakeDecoder()
    with pytest.raises(OutOfRange):
        convert.generate_request_from_proto(
            generate(settings=pb.GenerationSettings(max_new_tokens=9999)), LIMITS, decode
        )
    assert decode.calls == []


def test_too_many_images_for_the_limits():
    limits = LimitsConfig(max_images=1)
    with pytest.raises(OutOfRange, match=r"number of images is 2, over limits\.max_images = 1"):
        convert.study_from_proto(study(lateral=PNG), limits, FakeDecoder())


def test_error_messages_never_echo_request_text():
    secret = "PATIENT Jane Roe " * 300
    with pytest.raises(OutOfRange) as info:
        from_proto(generate(study=study(indication=secret)))
    assert "PATIENT" not in str(info.value)


def test_every_domain_enum_member_has_a_proto_value():
    assert set(convert._TASK_KINDS.values()) == set(TaskKind)
    assert set(convert.TOKEN_KINDS_FROM_PROTO.values()) == set(TokenKind)
    assert set(convert._STEERING_MODES.values()) == set(SteeringMode)
    assert set(convert._POSITION_SCOPES.values()) == set(t.PositionScope)
    assert set(convert._AGGREGATIONS.values()) == set(t.Aggregation)
    assert set(convert._MEDIA_TYPES.values()) == set(MediaType)
    assert set(to_proto._IMAGE_ROLE_TO_PROTO) == set(ImageRole)
    assert set(to_proto._FINISH_REASON_TO_PROTO) == set(t.FinishReason)


# -------------------------------------------------------------------------------------------
# Responses

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
    msg = to_proto.feature_to_proto(4, labelled, 1.0)
    assert (msg.feature, msg.label, msg.decoder_norm) == (4, "sternal wires", 1.0)
    bare = to_proto.feature_to_proto(5, None, 0.5)
    assert not bare.HasField("label") and not bare.HasField("interpretation_score")
    search = to_proto.search_response_to_proto("f4", [(labelled, 3.2)], torch.ones(8) * 2)
    assert search.sae_id == "f4"
    assert search.matches[0].feature.decoder_norm == 2.0
    assert search.matches[0].score == pytest.approx(3.2)


def test_info_to_proto():
    config = ServerConfig(saes=(SaeSpec(id="f4", path="/x"),))
    model = to_proto.ModelDescription(
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
    )
    sae = to_proto.SaeDescription(
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
    msg = to_proto.info_to_proto(model, [sae], config, versions)
    assert msg.model.image_tokens_per_image == 1369
    assert msg.saes[0].has_interpretations and list(msg.saes[0].group_sizes) == [1024, 3072, 12288]
    assert msg.default_sae_id == "f4"
    assert msg.limits.max_new_tokens == 1024 and msg.limits.queue_size == 64
    assert msg.limits.max_abs_strength == 1e4
    assert msg.versions.transformers == "5.24"
