"""Hostile and unusual input, one case per test: every call ends with the documented status (or
succeeds with sane output where the input is valid), and the server is still SERVING after it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2

from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._support import (
    SERVING,
    SMALL_PNG,
    Outcome,
    dicom_bytes,
    finished_events,
    health_status,
    jpeg_bytes,
    length_delimited,
    noise,
    outcome_of,
    png_bytes,
    png_claiming_size,
    study,
)
from tests.support.field_paths import resolves

Code = grpc.StatusCode
IMAGE_TOKENS = 1369


@pytest.fixture(autouse=True)
def still_serving_after_each_case(tight_server, tight_stub):
    yield
    assert health_status(tight_server.target) == SERVING
    assert health_status(f"127.0.0.1:{tight_server.ports.health}") == SERVING
    assert tight_stub.GetInfo(pb.GetInfoRequest()).model.image_tokens_per_image == IMAGE_TOKENS


def encode(stub: pb_grpc.MairaSaeServiceStub, request_study: pb.Study, **fields: object) -> Outcome:
    return outcome_of(lambda: stub.Encode(pb.EncodeRequest(study=request_study, **fields)))


def assert_sane_encoding(outcome: Outcome) -> None:
    assert outcome.code == Code.OK, outcome.details
    response: pb.EncodeResponse = outcome.response
    patches = [t for t in response.tokens if t.token.kind == pb.TOKEN_KIND_IMAGE_PATCH]
    assert len(patches) == IMAGE_TOKENS
    quality = response.quality
    assert all(math.isfinite(v) for v in (quality.mse, quality.explained_variance, quality.cosine))
    assert -1.0 <= quality.cosine <= 1.0
    assert all(math.isfinite(v) and v > 0 for t in response.tokens for v in t.values)


# -------------------------------------------------------------------------------------------
# Images


def _rgba() -> np.ndarray:
    return np.dstack([noise(seed=1), noise(seed=2), noise(seed=3), noise(seed=4)])


VALID_IMAGES: dict[str, Callable[[], bytes]] = {
    "1x1": lambda: png_bytes(np.array([[7]], dtype=np.uint8)),
    "constant": lambda: png_bytes(np.full((64, 64), 128, dtype=np.uint8)),
    "16-bit greyscale": lambda: png_bytes(noise().astype(np.uint16) * 257),
    "rgba": lambda: png_bytes(_rgba()),
    "jpeg": lambda: jpeg_bytes(noise()),
    "dicom": lambda: dicom_bytes(pixels=noise().astype(np.uint16) * 16),
}


@pytest.mark.parametrize("make", VALID_IMAGES.values(), ids=VALID_IMAGES.keys())
def test_unusual_but_valid_images_are_encoded(tight_stub, make):
    assert_sane_encoding(encode(tight_stub, study(make())))


INVALID_IMAGES: dict[str, tuple[Callable[[], pb.Study], Code]] = {
    "empty bytes": (lambda: study(b""), Code.INVALID_ARGUMENT),
    "random bytes": (
        lambda: study(np.random.default_rng(7).bytes(4096)),
        Code.INVALID_ARGUMENT,
    ),
    "truncated png": (lambda: study(SMALL_PNG[: len(SMALL_PNG) // 2]), Code.INVALID_ARGUMENT),
    "truncated jpeg": (lambda: study(jpeg_bytes(noise())[:400]), Code.INVALID_ARGUMENT),
    "dicom without pixel data": (lambda: study(dicom_bytes()), Code.INVALID_ARGUMENT),
    "dicom with undecodable compressed transfer syntax": (
        lambda: study(dicom_bytes(compressed_pixel_data=b"\xff\x4f\xff\x51" + bytes(200))),
        Code.INVALID_ARGUMENT,
    ),
    "png declared as jpeg": (
        lambda: study(SMALL_PNG, media_type=pb.MEDIA_TYPE_JPEG),
        Code.INVALID_ARGUMENT,
    ),
    "png declared as dicom": (
        lambda: study(SMALL_PNG, media_type=pb.MEDIA_TYPE_DICOM),
        Code.INVALID_ARGUMENT,
    ),
    "unknown media type": (lambda: study(SMALL_PNG, media_type=42), Code.INVALID_ARGUMENT),
    "no frontal image": (lambda: pb.Study(indication="x"), Code.INVALID_ARGUMENT),
}


@pytest.mark.parametrize(("make", "code"), INVALID_IMAGES.values(), ids=INVALID_IMAGES.keys())
def test_unusable_images_are_refused(tight_stub, make, code):
    outcome = encode(tight_stub, make())
    assert outcome.code == code, outcome.details
    assert "study." in outcome.details  # names the field
    assert outcome.field_path().startswith("study.")
    assert resolves(pb.EncodeRequest.DESCRIPTOR, outcome.field_path())


def test_png_header_claiming_100000_squared_pixels_is_out_of_range(tight_stub):
    outcome = encode(tight_stub, study(png_claiming_size(100_000, 100_000)))
    assert outcome.code == Code.OUT_OF_RANGE, (outcome.code, outcome.details)
    assert "max_image_pixels" in outcome.details


def test_png_header_claiming_100000_squared_pixels_is_refused_before_decoding(tight_stub):
    """Whatever its code, the bomb is refused at once, from the header, not after allocating
    10^10 pixels (which would take far longer than the deadline, or kill the server)."""
    outcome = outcome_of(
        lambda: tight_stub.Encode(
            pb.EncodeRequest(study=study(png_claiming_size(100_000, 100_000))), timeout=10
        )
    )
    assert outcome.code in (Code.INVALID_ARGUMENT, Code.OUT_OF_RANGE), outcome.details
    assert "pixels" in outcome.details


def test_image_over_max_image_bytes_is_out_of_range(tight_stub, tight_info):
    big = b"\x89PNG\r\n\x1a\n" + bytes(tight_info.limits.max_image_bytes)
    outcome = encode(tight_stub, study(big))
    assert outcome.code == Code.OUT_OF_RANGE, outcome.details
    assert "max_image_bytes" in outcome.details


# -------------------------------------------------------------------------------------------
# Text


def test_empty_text_is_accepted(tight_stub):
    # maira_sae.proto says a present but empty section is passed as empty text; the prompt
    # builder (server/maira2/prompts.py, Sections) renders "" as "N/A" like an absent one.
    # Reported to the lead as a contract discrepancy; here only the accepted call is checked.
    assert_sane_encoding(encode(tight_stub, study(SMALL_PNG, indication="", technique="")))


@pytest.mark.parametrize("field", ["indication", "technique", "comparison", "prior_report"])
def test_text_over_the_limit_is_out_of_range(tight_stub, tight_info, field):
    too_long = "a" * (tight_info.limits.max_text_chars + 1)
    outcome = encode(tight_stub, study(SMALL_PNG, **{field: too_long}))
    assert outcome.code == Code.OUT_OF_RANGE, outcome.details
    assert field in outcome.details and "max_text_chars" in outcome.details


def test_text_at_the_limit_is_accepted(tight_stub, tight_info):
    at_limit = "b" * tight_info.limits.max_text_chars
    assert_sane_encoding(encode(tight_stub, study(SMALL_PNG, indication=at_limit)))


def test_nul_in_text_is_invalid(tight_stub):
    outcome = encode(tight_stub, study(SMALL_PNG, indication="cough\x00cut here"))
    assert outcome.code == Code.INVALID_ARGUMENT, outcome.details


_FRONTAL_ONLY = pb.Study(frontal=pb.Image(data=SMALL_PNG)).SerializeToString()

# (method, response type, a serialized request holding invalid UTF-8 in a string field)
INVALID_UTF8 = {
    "Encode study.indication": (
        "Encode",
        pb.EncodeResponse,
        length_delimited(1, _FRONTAL_ONLY + length_delimited(4, b"cough \xff\xfe\xc3(")),
    ),
    "Encode response": (
        "Encode",
        pb.EncodeResponse,
        length_delimited(1, _FRONTAL_ONLY) + length_delimited(3, b"\x80\x80"),
    ),
    "SearchFeatures query": (
        "SearchFeatures",
        pb.SearchFeaturesResponse,
        length_delimited(2, b"pace\xedmaker"),
    ),
    "SearchFeatures activation_text": (
        "SearchFeatures",
        pb.SearchFeaturesResponse,
        length_delimited(4, b"enlarged \xc3("),
    ),
}


@pytest.mark.parametrize(
    ("method", "response_type", "payload"), INVALID_UTF8.values(), ids=INVALID_UTF8.keys()
)
def test_invalid_utf8_in_a_string_field_is_invalid_argument(
    tight_server, method, response_type, payload
):
    with grpc.insecure_channel(tight_server.target) as channel:
        raw = channel.unary_unary(
            f"/maira_sae.v1.MairaSaeService/{method}",
            request_serializer=None,  # the bytes go out as they are
            response_deserializer=response_type.FromString,
        )
        outcome = outcome_of(lambda: raw(payload, timeout=30))
    assert outcome.code == Code.INVALID_ARGUMENT, (outcome.code, outcome.details)


def test_special_tokens_in_text_stay_text(tight_stub):
    literal = "<image><image></s><s>"
    outcome = encode(
        tight_stub,
        study(SMALL_PNG, indication=literal),
        token_filter=pb.TokenFilter(
            kinds=[pb.TOKEN_KIND_IMAGE_PATCH, pb.TOKEN_KIND_PROMPT_TEXT, pb.TOKEN_KIND_SPECIAL]
        ),
    )
    assert_sane_encoding(outcome)
    tokens = [t.token for t in outcome.response.tokens]
    assert sum(t.kind == pb.TOKEN_KIND_IMAGE_PATCH for t in tokens) == IMAGE_TOKENS
    prompt_text = "".join(t.text for t in tokens if t.kind == pb.TOKEN_KIND_PROMPT_TEXT)
    assert literal in prompt_text
    specials = [t.text for t in tokens if t.kind == pb.TOKEN_KIND_SPECIAL]
    assert specials.count("<s>") == 1 and "</s>" not in specials


# -------------------------------------------------------------------------------------------
# Steering and generation


@dataclass(frozen=True)
class GenerateCase:
    settings: pb.GenerationSettings
    variants: tuple[pb.Variant, ...] = ()
    sae_id: str = ""


def steer(**intervention: object) -> tuple[pb.Variant, ...]:
    fields = {"feature": 3, "mode": pb.STEERING_MODE_ADD, "value": 1.0, **intervention}
    return (pb.Variant(interventions=[pb.Intervention(**fields)]),)


def generate(stub: pb_grpc.MairaSaeServiceStub, case: GenerateCase) -> Outcome:
    request = pb.GenerateSteeredRequest(
        study=study(SMALL_PNG), settings=case.settings, variants=case.variants, sae_id=case.sae_id
    )
    return outcome_of(lambda: stub.GenerateSteered(request, timeout=60))


TWO = pb.GenerationSettings(max_new_tokens=2)


def refused_generations(info: pb.GetInfoResponse) -> dict[str, tuple[GenerateCase, Code]]:
    limits, sae = info.limits, info.saes[0]
    many_interventions = (
        pb.Variant(
            interventions=[
                pb.Intervention(feature=1, mode=pb.STEERING_MODE_ADD, value=1.0)
                for _ in range(limits.max_interventions_per_variant + 1)
            ]
        ),
    )
    return {
        "feature -1 as uint32": (GenerateCase(TWO, steer(feature=2**32 - 1)), Code.OUT_OF_RANGE),
        "feature d_sae": (GenerateCase(TWO, steer(feature=sae.d_sae)), Code.OUT_OF_RANGE),
        "feature 2^31": (GenerateCase(TWO, steer(feature=2**31)), Code.OUT_OF_RANGE),
        "strength nan": (GenerateCase(TWO, steer(value=math.nan)), Code.INVALID_ARGUMENT),
        "strength +inf": (GenerateCase(TWO, steer(value=math.inf)), Code.INVALID_ARGUMENT),
        "strength -inf": (GenerateCase(TWO, steer(value=-math.inf)), Code.INVALID_ARGUMENT),
        "strength huge": (GenerateCase(TWO, steer(value=1e300)), Code.OUT_OF_RANGE),
        "strength just over": (
            GenerateCase(TWO, steer(value=-(limits.max_abs_strength * 1.01))),
            Code.OUT_OF_RANGE,
        ),
        "unknown mode 99": (GenerateCase(TWO, steer(mode=99)), Code.INVALID_ARGUMENT),
        "mode unspecified": (GenerateCase(TWO, steer(mode=0)), Code.INVALID_ARGUMENT),
        "unknown scope 99": (GenerateCase(TWO, steer(scope=99)), Code.INVALID_ARGUMENT),
        "too many interventions": (GenerateCase(TWO, many_interventions), Code.OUT_OF_RANGE),
        "too many variants": (
            GenerateCase(TWO, tuple(pb.Variant() for _ in range(limits.max_variants + 1))),
            Code.OUT_OF_RANGE,
        ),
        "direction too short": (
            GenerateCase(
                TWO,
                (
                    pb.Variant(
                        interventions=[
                            pb.Intervention(
                                direction=pb.Direction(values=[1.0] * (sae.d_model - 1)),
                                mode=pb.STEERING_MODE_ADD,
                                value=1.0,
                            )
                        ]
                    ),
                ),
            ),
            Code.INVALID_ARGUMENT,
        ),
        "direction with nan": (
            GenerateCase(
                TWO,
                steer(feature=None, direction=pb.Direction(values=[math.nan] * sae.d_model)),
            ),
            Code.INVALID_ARGUMENT,
        ),
        "unknown sae id": (GenerateCase(TWO, steer(), sae_id="no-such-sae"), Code.NOT_FOUND),
        "max_new_tokens over the limit": (
            GenerateCase(pb.GenerationSettings(max_new_tokens=limits.max_new_tokens + 1)),
            Code.OUT_OF_RANGE,
        ),
        "max_new_tokens 2^32-1": (
            GenerateCase(pb.GenerationSettings(max_new_tokens=2**32 - 1)),
            Code.OUT_OF_RANGE,
        ),
        "temperature negative": (
            GenerateCase(pb.GenerationSettings(max_new_tokens=2, temperature=-0.5)),
            Code.OUT_OF_RANGE,
        ),
        "temperature nan": (
            GenerateCase(pb.GenerationSettings(max_new_tokens=2, temperature=math.nan)),
            Code.INVALID_ARGUMENT,
        ),
        "top_p above 1": (
            GenerateCase(pb.GenerationSettings(max_new_tokens=2, temperature=1, top_p=1.5)),
            Code.OUT_OF_RANGE,
        ),
        "top_p negative": (
            GenerateCase(pb.GenerationSettings(max_new_tokens=2, temperature=1, top_p=-0.1)),
            Code.OUT_OF_RANGE,
        ),
        "top_p nan": (
            GenerateCase(pb.GenerationSettings(max_new_tokens=2, temperature=1, top_p=math.nan)),
            Code.INVALID_ARGUMENT,
        ),
        "temperature 1e-308": (
            GenerateCase(pb.GenerationSettings(max_new_tokens=2, temperature=1e-308)),
            Code.OUT_OF_RANGE,
        ),
        "temperature 1e308": (
            GenerateCase(pb.GenerationSettings(max_new_tokens=2, temperature=1e308)),
            Code.OUT_OF_RANGE,
        ),
        "too many intervention ranges": (
            GenerateCase(
                TWO,
                steer(
                    scope=pb.POSITION_SCOPE_RANGES,
                    ranges=[
                        pb.TokenRange(start=i, end=i + 1)
                        for i in range(limits.max_token_ranges + 1)
                    ],
                ),
            ),
            Code.OUT_OF_RANGE,
        ),
        "sae_id of 10000 characters": (
            GenerateCase(TWO, steer(), sae_id="s" * 10_000),
            Code.OUT_OF_RANGE,
        ),
    }


REFUSED_NAMES = list(refused_generations(pb.GetInfoResponse(saes=[pb.SaeInfo()])))


@pytest.mark.parametrize("name", REFUSED_NAMES)
def test_bad_steering_and_generation_settings_are_refused(tight_stub, tight_info, name):
    case, code = refused_generations(tight_info)[name]
    outcome = generate(tight_stub, case)
    assert outcome.code == code, (outcome.code, outcome.details)
    if code in (Code.INVALID_ARGUMENT, Code.OUT_OF_RANGE):
        assert resolves(pb.GenerateSteeredRequest.DESCRIPTOR, outcome.field_path())
    else:
        assert outcome.detail(error_details_pb2.ErrorInfo) is not None


def test_max_new_tokens_zero_means_the_documented_default(tight_stub, tight_info):
    outcome = generate(tight_stub, GenerateCase(pb.GenerationSettings(max_new_tokens=0)))
    assert outcome.code == Code.OK, outcome.details
    (result,) = finished_events(outcome.response).values()
    default = tight_info.limits.default_max_new_tokens
    # The demo model never emits </s>, so the default is reached exactly.
    assert (result.num_tokens, result.finish_reason) == (default, pb.FINISH_REASON_LENGTH)


def test_max_new_tokens_at_the_limit_and_edge_values_are_accepted(tight_stub, tight_info):
    limits = tight_info.limits
    case = GenerateCase(
        pb.GenerationSettings(max_new_tokens=limits.max_new_tokens, temperature=2.0, top_p=1.0),
        variants=(
            pb.Variant(),
            *steer(value=limits.max_abs_strength),
            *steer(feature=tight_info.saes[0].d_sae - 1, mode=pb.STEERING_MODE_ABLATE, value=0),
        ),
    )
    outcome = generate(tight_stub, case)
    assert outcome.code == Code.OK, outcome.details
    results = finished_events(outcome.response)
    assert sorted(results) == [0, 1, 2]
    assert all(r.num_tokens == limits.max_new_tokens for r in results.values())


def test_tiny_top_p_samples_the_most_likely_token(tight_stub):
    """top_p 1e-300 rounds to 0 in float32: the nucleus keeps the top token (was INTERNAL)."""
    tiny = pb.GenerationSettings(max_new_tokens=3, temperature=1.0, top_p=1e-300, seed=5)
    greedy = pb.GenerationSettings(max_new_tokens=3)
    texts = []
    for settings in (tiny, greedy):
        outcome = generate(tight_stub, GenerateCase(settings))
        assert outcome.code == Code.OK, (outcome.code, outcome.details)
        (result,) = finished_events(outcome.response).values()
        texts.append(result.text)
    assert texts[0] == texts[1]


def test_smallest_allowed_temperature_is_finite(tight_stub):
    outcome = generate(
        tight_stub, GenerateCase(pb.GenerationSettings(max_new_tokens=2, temperature=0.01))
    )
    assert outcome.code == Code.OK, (outcome.code, outcome.details)


# -------------------------------------------------------------------------------------------
# Cost bounded before it runs


EMOJI = "\U0001f600"  # four demo tokens


def test_prompt_over_max_prompt_tokens_is_out_of_range_naming_count_and_limit(
    tight_stub, tight_info
):
    limits = tight_info.limits
    text = EMOJI * limits.max_text_chars  # within max_text_chars, four tokens a character
    outcome = encode(tight_stub, study(SMALL_PNG, indication=text))
    assert outcome.code == Code.OUT_OF_RANGE, (outcome.code, outcome.details)
    assert "max_prompt_tokens" in outcome.details
    assert f"= {limits.max_prompt_tokens}" in outcome.details
    assert "2220 tokens" in outcome.details  # 1420 + 4 x 200


def test_response_past_max_sequence_tokens_is_out_of_range(tight_stub, tight_info):
    text = EMOJI * tight_info.limits.max_text_chars
    outcome = encode(tight_stub, study(SMALL_PNG), response=text)
    assert outcome.code == Code.OUT_OF_RANGE, (outcome.code, outcome.details)
    assert "max_sequence_tokens" in outcome.details and "is 2221 tokens" in outcome.details


def test_top_features_counts_tokens_too(tight_stub, tight_info):
    text = EMOJI * tight_info.limits.max_text_chars
    outcome = outcome_of(
        lambda: tight_stub.TopFeatures(
            pb.TopFeaturesRequest(study=study(SMALL_PNG, comparison=text))
        )
    )
    assert outcome.code == Code.OUT_OF_RANGE and "max_prompt_tokens" in outcome.details


def test_token_filter_ranges_over_the_cap_are_out_of_range(tight_stub, tight_info):
    cap = tight_info.limits.max_token_ranges
    ranges = [pb.TokenRange(start=i, end=i + 1) for i in range(cap + 1)]
    outcome = encode(tight_stub, study(SMALL_PNG), token_filter=pb.TokenFilter(ranges=ranges))
    assert outcome.code == Code.OUT_OF_RANGE, (outcome.code, outcome.details)
    assert "token_filter.ranges" in outcome.details and "max_token_ranges" in outcome.details


def test_token_filter_ranges_at_the_cap_select_exactly_their_positions(tight_stub, tight_info):
    cap = tight_info.limits.max_token_ranges
    # Overlapping, unsorted, touching and past-the-end ranges: the union is what counts.
    ranges = [(1400, 1410), (3, 5), (4, 8), (8, 9), (100, 101), (1415, 99_999), (0, 1)]
    ranges += [(50, 52)] * (cap - len(ranges))
    outcome = encode(
        tight_stub,
        study(SMALL_PNG),
        token_filter=pb.TokenFilter(
            kinds=[pb.TOKEN_KIND_IMAGE_PATCH, pb.TOKEN_KIND_PROMPT_TEXT, pb.TOKEN_KIND_SPECIAL],
            ranges=[pb.TokenRange(start=a, end=b) for a, b in ranges],
        ),
    )
    assert outcome.code == Code.OK, outcome.details
    expected = sorted({p for a, b in ranges for p in range(a, min(b, 1420))})
    assert [t.token.position for t in outcome.response.tokens] == expected


def test_thin_strip_image_is_out_of_range_before_resizing(tight_stub, tight_info):
    """1 x 16384 pixels: resizing the short side to the model's size would take GBs."""
    strip = png_bytes(np.full((1, 16384), 9, dtype=np.uint8))
    outcome = encode(tight_stub, study(strip))
    assert outcome.code == Code.OUT_OF_RANGE, (outcome.code, outcome.details)
    assert "max_image_aspect_ratio" in outcome.details and "16384x1" in outcome.details


def test_image_at_the_aspect_ratio_limit_is_accepted(tight_stub, tight_info):
    ratio = int(tight_info.limits.max_image_aspect_ratio)
    assert_sane_encoding(encode(tight_stub, study(png_bytes(noise(32, 32 * ratio)))))


LONG_ID = "x" * 10_000


@pytest.mark.parametrize(
    "call",
    [
        lambda stub: stub.Encode(pb.EncodeRequest(study=study(SMALL_PNG), sae_id=LONG_ID)),
        lambda stub: stub.TopFeatures(
            pb.TopFeaturesRequest(study=study(SMALL_PNG), sae_id=LONG_ID)
        ),
        lambda stub: stub.GetFeature(pb.GetFeatureRequest(sae_id=LONG_ID, feature=1)),
        lambda stub: stub.SearchFeatures(pb.SearchFeaturesRequest(sae_id=LONG_ID, query="a")),
    ],
    ids=["Encode", "TopFeatures", "GetFeature", "SearchFeatures"],
)
def test_a_10000_character_sae_id_is_out_of_range_with_a_short_message(tight_stub, call):
    outcome = outcome_of(lambda: call(tight_stub))
    assert outcome.code == Code.OUT_OF_RANGE, (outcome.code, outcome.details)
    assert "max_id_chars" in outcome.details and len(outcome.details) < 200
    assert outcome.details.count("x") < 100


def test_an_unknown_sae_id_is_quoted_cut_short(tight_stub, tight_info):
    sae_id = "y" * tight_info.limits.max_id_chars
    outcome = outcome_of(lambda: tight_stub.GetFeature(pb.GetFeatureRequest(sae_id=sae_id)))
    assert outcome.code == Code.NOT_FOUND, (outcome.code, outcome.details)
    assert f"({len(sae_id)} characters)" in outcome.details or sae_id in outcome.details
    assert len(outcome.details) < 400


def test_get_info_reports_every_new_limit(tight_info):
    limits = tight_info.limits
    assert (limits.max_prompt_tokens, limits.max_sequence_tokens) == (1900, 2000)
    assert (limits.max_token_ranges, limits.max_id_chars) == (8, 64)
    assert limits.max_image_aspect_ratio == 4.0
    assert limits.image_memory_bytes > 0 and limits.stream_buffer_events > 0


def test_get_info_reports_how_the_engine_is_shared(tight_info):
    from maira_sae.server.service.config import BatchingConfig

    batching, admission = BatchingConfig(), tight_info.admission
    assert admission.long_call_tokens == batching.long_call_tokens
    assert admission.long_call_places == batching.long_call_places < tight_info.limits.queue_size
    assert admission.short_call_rows == batching.short_call_rows
    assert admission.batch_weight == pytest.approx(batching.batch_weight)
    assert admission.max_call_seconds == batching.max_call_s
    assert admission.priority_metadata_key == "x-maira-sae-priority"
    assert admission.refusals_paced is batching.pace_refusals is True
