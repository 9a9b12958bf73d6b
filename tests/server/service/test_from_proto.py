"""Protobuf -> domain requests: round trips, defaults, and every validation's code and words."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maira_sae.client.imaging.decode import ImageDecodeError, MediaType
from maira_sae.sae.interventions import SteeringMode
from maira_sae.server.engine import types as t
from maira_sae.server.errors import InvalidArgument, OutOfRange
from maira_sae.server.maira2.study import ImageRole, TaskKind
from maira_sae.server.maira2.tokens import TokenKind
from maira_sae.server.service import from_proto, to_proto
from maira_sae.server.service.config import LimitsConfig
from maira_sae.v1 import maira_sae_pb2 as pb
from tests.support.field_paths import resolves

LIMITS = LimitsConfig()
PNG = pb.Image(data=b"\x89PNG-bytes", media_type=pb.MEDIA_TYPE_PNG)


class FakeDecoder:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, MediaType | None, str]] = []
        self.frames: list[int | None] = []

    def __call__(
        self, data: bytes, media_type: MediaType | None, name: str, frame: int | None = None
    ) -> np.ndarray:
        self.calls.append((data, media_type, name))
        self.frames.append(frame)
        if data == b"corrupt":
            raise ImageDecodeError(name, "not a PNG file")
        return np.full((4, 4), len(self.calls), dtype=np.uint16)


def study(**fields) -> pb.Study:
    return pb.Study(frontal=PNG, **fields)


def generate(**fields) -> pb.GenerateSteeredRequest:
    return pb.GenerateSteeredRequest(**{"study": study(), **fields})


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
    domain = from_proto.study_from_proto(msg, LIMITS, decode)
    assert decode.frames == [None, None, None]
    assert [c[1:] for c in decode.calls] == [
        (MediaType.PNG, "study.frontal"),
        (None, "study.lateral"),
        (MediaType.DICOM, "study.prior"),
    ]
    assert domain.frontal[0, 0] == 1 and domain.lateral[0, 0] == 2 and domain.prior[0, 0] == 3
    assert domain.indication == "dyspnoea"
    assert domain.comparison == ""  # present but empty
    assert domain.technique is None and domain.prior_report is None  # absent: "N/A"


def test_a_chosen_frame_reaches_the_decoder_and_zero_is_not_unset():
    decode = FakeDecoder()
    msg = pb.Study(
        frontal=pb.Image(data=b"dicom", frame=2), lateral=pb.Image(data=b"dicom", frame=0)
    )
    from_proto.study_from_proto(msg, LIMITS, decode)
    assert decode.frames == [2, 0]


def test_encode_request_defaults():
    request = from_proto.encode_request_from_proto(
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
    request = from_proto.encode_request_from_proto(msg, LIMITS, FakeDecoder())
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
    default = from_proto.top_features_request_from_proto(
        pb.TopFeaturesRequest(study=study()), LIMITS, FakeDecoder()
    )
    assert (default.aggregation, default.k) == (t.Aggregation.MAX, from_proto.DEFAULT_TOP_K)
    chosen = from_proto.top_features_request_from_proto(
        pb.TopFeaturesRequest(study=study(), aggregation=pb.AGGREGATION_COUNT, k=5),
        LIMITS,
        FakeDecoder(),
    )
    assert (chosen.aggregation, chosen.k) == (t.Aggregation.COUNT, 5)


def test_generate_request_defaults_to_one_baseline():
    request = from_proto.generate_request_from_proto(generate(), LIMITS, FakeDecoder())
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
    request = from_proto.generate_request_from_proto(msg, LIMITS, FakeDecoder())
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
    query = from_proto.search_query_from_proto(pb.SearchFeaturesRequest(query="pacemaker"), LIMITS)
    assert query == from_proto.SearchQuery("", "pacemaker", from_proto.DEFAULT_TOP_K)


def test_search_by_activation_request():
    msg = pb.SearchFeaturesRequest(activation_text="enlarged heart", limit=7, sae_id="f4")
    query = from_proto.search_query_from_proto(msg, LIMITS)
    assert query == t.ActivationSearchRequest(text="enlarged heart", limit=7, sae_id="f4")
    default = pb.SearchFeaturesRequest(activation_text="heart")
    assert from_proto.search_query_from_proto(default, LIMITS).limit == from_proto.DEFAULT_TOP_K


def test_feature_query_defaults_and_nearest():
    query = from_proto.feature_query_from_proto(pb.GetFeatureRequest(feature=3), LIMITS)
    assert (query.num_logits, query.num_nearest) == (10, from_proto.DEFAULT_NUM_NEAREST)
    asked = pb.GetFeatureRequest(feature=3, num_nearest=4)
    assert from_proto.feature_query_from_proto(asked, LIMITS).num_nearest == 4
    with pytest.raises(OutOfRange, match=r"num_nearest is 300, over limits\.max_top_k = 256"):
        from_proto.feature_query_from_proto(pb.GetFeatureRequest(num_nearest=300), LIMITS)


TOO_LONG = "x" * (LIMITS.max_text_chars + 1)

# (what to convert, error, words the message must hold)
INVALID_CASES = {
    "no frontal": (pb.GenerateSteeredRequest(), InvalidArgument, "study.frontal is required"),
    "empty image": (
        pb.GenerateSteeredRequest(study=pb.Study(frontal=pb.Image())),
        InvalidArgument,
        "study.frontal.data is empty",
    ),
    "image too big": (
        pb.GenerateSteeredRequest(
            study=study(lateral=pb.Image(data=b"x" * (LIMITS.max_image_bytes + 1)))
        ),
        OutOfRange,
        f"study.lateral.data is {LIMITS.max_image_bytes + 1} bytes, over limits.max_image_bytes",
    ),
    "unknown media type": (
        pb.GenerateSteeredRequest(study=study(prior=pb.Image(data=b"x", media_type=9))),
        InvalidArgument,
        "study.prior.media_type has unknown value 9",
    ),
    "undecodable image": (
        pb.GenerateSteeredRequest(study=pb.Study(frontal=pb.Image(data=b"corrupt"))),
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
        "settings.temperature must be 0 (greedy) or in [0.01, 100]",
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
        "aggregation has unknown value 8; known values: AGGREGATION_MAX, AGGREGATION_MEAN",
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
    "neither query nor activation text": (
        pb.SearchFeaturesRequest(),
        InvalidArgument,
        "query is required",
    ),
    "query and activation text": (
        pb.SearchFeaturesRequest(query="heart", activation_text="enlarged heart"),
        InvalidArgument,
        "not both",
    ),
    "blank activation text": (
        pb.SearchFeaturesRequest(activation_text=" \n"),
        InvalidArgument,
        "activation_text is blank",
    ),
    "activation text too long": (
        pb.SearchFeaturesRequest(activation_text=TOO_LONG),
        OutOfRange,
        f"activation_text has {len(TOO_LONG)} characters, over limits.max_text_chars",
    ),
    "activation text with NUL": (
        pb.SearchFeaturesRequest(activation_text="heart\x00"),
        InvalidArgument,
        "activation_text contains a NUL character",
    ),
    "activation search limit": (
        pb.SearchFeaturesRequest(activation_text="heart", limit=257),
        OutOfRange,
        "limit is 257, over limits.max_top_k = 256",
    ),
}


def request_from_proto(msg):
    decode = FakeDecoder()
    if isinstance(msg, pb.GenerateSteeredRequest):
        return from_proto.generate_request_from_proto(msg, LIMITS, decode)
    if isinstance(msg, pb.EncodeRequest):
        return from_proto.encode_request_from_proto(msg, LIMITS, decode)
    if isinstance(msg, pb.TopFeaturesRequest):
        return from_proto.top_features_request_from_proto(msg, LIMITS, decode)
    return from_proto.search_query_from_proto(msg, LIMITS)


@pytest.mark.parametrize("case", list(INVALID_CASES))
def test_validation_error(case):
    msg, error, words = INVALID_CASES[case]
    with pytest.raises(error) as info:
        request_from_proto(msg)
    assert type(info.value) is error
    assert words in str(info.value)


@pytest.mark.parametrize("case", list(INVALID_CASES))
def test_validation_error_names_the_proto_field_path_and_a_reason(case):
    """The BadRequest field violation a caller gets: a path that resolves in the request's
    message type (the leaf's name is in the message too), and a stable reason code."""
    msg = INVALID_CASES[case][0]
    with pytest.raises((InvalidArgument, OutOfRange)) as info:
        request_from_proto(msg)
    error = info.value
    assert error.reason.isupper() and error.reason.replace("_", "").isalpha()
    assert error.reason not in {"INVALID_ARGUMENT", "OUT_OF_RANGE"}  # a precise one
    assert resolves(msg.DESCRIPTOR, error.field), error.field
    leaf = error.field.rsplit(".", 1)[-1].split("[")[0]
    assert leaf in str(error)


def test_limit_errors_carry_the_limit_in_their_metadata():
    with pytest.raises(OutOfRange) as info:
        request_from_proto(pb.TopFeaturesRequest(study=study(), k=1000))
    assert info.value.reason == "LIMIT_EXCEEDED"
    assert info.value.metadata == {"limit": "max_top_k", "limitValue": "256", "value": "1000"}


def test_cheap_checks_run_before_any_image_is_decoded():
    decode = FakeDecoder()
    with pytest.raises(OutOfRange):
        from_proto.generate_request_from_proto(
            generate(settings=pb.GenerationSettings(max_new_tokens=9999)), LIMITS, decode
        )
    assert decode.calls == []


def test_too_many_images_for_the_limits():
    limits = LimitsConfig(max_images=1)
    with pytest.raises(OutOfRange, match=r"number of images is 2, over limits\.max_images = 1"):
        from_proto.study_from_proto(study(lateral=PNG), limits, FakeDecoder())


def test_error_messages_never_echo_request_text():
    secret = "PATIENT Jane Roe " * 300
    with pytest.raises(OutOfRange) as info:
        request_from_proto(generate(study=study(indication=secret)))
    assert "PATIENT" not in str(info.value)


def test_every_domain_enum_member_has_a_proto_value():
    assert set(from_proto._TASK_KINDS.values()) == set(TaskKind)
    assert set(from_proto.TOKEN_KINDS_FROM_PROTO.values()) == set(TokenKind)
    assert set(from_proto._STEERING_MODES.values()) == set(SteeringMode)
    assert set(from_proto._POSITION_SCOPES.values()) == set(t.PositionScope)
    assert set(from_proto._AGGREGATIONS.values()) == set(t.Aggregation)
    assert set(from_proto._MEDIA_TYPES.values()) == set(MediaType)
    assert set(to_proto._IMAGE_ROLE_TO_PROTO) == set(ImageRole)
    assert set(to_proto._FINISH_REASON_TO_PROTO) == set(t.FinishReason)


# -------------------------------------------------------------------------------------------
# Responses
