"""Property test: random requests within and beyond every limit never end in INTERNAL or
UNKNOWN, never crash the server, and always end with a status from the documented set.

Most drawn requests break some rule and are refused before the model runs; the rest run on
the demo checkpoint under the small limits of ``tight_server`` (a few new tokens at most), so a
few hundred examples take well under a minute.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._support import (
    DOCUMENTED_CODES,
    SERVING,
    SMALL_PNG,
    dicom_bytes,
    health_status,
    outcome_of,
    png_bytes,
)
from tests.reliability.conftest import TIGHT_LIMITS

MIN_EXAMPLES = 300
DEMO_SAE = "demo-ef4-layer15"
D_SAE = 256  # of the demo SAE; checked against GetInfo in the test
D_MODEL = 64

IMAGES = [
    SMALL_PNG,
    png_bytes(np.array([[9]], dtype=np.uint8)),
    SMALL_PNG[:100],
    b"",
    b"\x00" * 64,
    dicom_bytes(),
]


def uint32(limit: int) -> st.SearchStrategy[int]:
    """0..limit+1 mostly, plus the values that break naive range checks."""
    return st.one_of(
        st.integers(0, limit + 1), st.sampled_from([limit, limit + 1, 2**31, 2**32 - 1])
    )


def enum_value(known: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, known), st.sampled_from([known + 1, 99, -1, 2**31 - 1]))


def text(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=12),
        st.sampled_from(["", "\x00", "<image>", "</s><s>", "x" * limit, "y" * (limit + 1)]),
    )


def optional_text(limit: int) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), text(limit))


def double(limit: float) -> st.SearchStrategy[float]:
    return st.one_of(
        st.floats(-limit, limit),
        st.sampled_from([math.nan, math.inf, -math.inf, limit * 1.5, -limit * 2, 1e300]),
        st.floats(allow_nan=True, allow_infinity=True),
    )


@st.composite
def studies(draw: st.DrawFn) -> pb.Study:
    limit = TIGHT_LIMITS["max_text_chars"]
    fields: dict[str, Any] = {}
    for name in ("frontal", "lateral", "prior"):
        if name == "frontal" and draw(st.integers(0, 9)) == 0:
            continue  # occasionally no frontal image at all
        if name != "frontal" and draw(st.integers(0, 3)) != 0:
            continue
        fields[name] = pb.Image(data=draw(st.sampled_from(IMAGES)), media_type=draw(enum_value(3)))
    for name in ("indication", "technique", "comparison", "prior_report"):
        value = draw(optional_text(limit))
        if value is not None:
            fields[name] = value
    return pb.Study(**fields)


@st.composite
def tasks(draw: st.DrawFn) -> pb.Task:
    return pb.Task(kind=draw(enum_value(3)), phrase=draw(text(TIGHT_LIMITS["max_text_chars"])))


@st.composite
def token_filters(draw: st.DrawFn) -> pb.TokenFilter:
    return pb.TokenFilter(
        kinds=draw(st.lists(enum_value(4), max_size=3)),
        image_indices=draw(st.lists(uint32(3), max_size=2)),
        ranges=[
            pb.TokenRange(start=start, end=end)
            for start, end in draw(st.lists(st.tuples(uint32(1500), uint32(1500)), max_size=2))
        ],
    )


@st.composite
def interventions(draw: st.DrawFn) -> pb.Intervention:
    message = pb.Intervention(
        mode=draw(enum_value(4)),
        value=draw(double(TIGHT_LIMITS["max_abs_strength"])),
        scope=draw(enum_value(6)),
        ranges=[
            pb.TokenRange(start=start, end=end)
            for start, end in draw(st.lists(st.tuples(uint32(1500), uint32(1500)), max_size=1))
        ],
    )
    target = draw(st.sampled_from(["feature", "direction", "none"]))
    if target == "feature":
        message.feature = draw(uint32(D_SAE))
    elif target == "direction":
        size = draw(st.sampled_from([0, 1, D_MODEL - 1, D_MODEL, D_MODEL + 1]))
        values = draw(st.lists(double(10.0), min_size=size, max_size=size))
        message.direction.values.extend(values)
    return message


@st.composite
def generate_requests(draw: st.DrawFn) -> pb.GenerateSteeredRequest:
    per_variant = TIGHT_LIMITS["max_interventions_per_variant"] + 1
    variants = draw(
        st.lists(
            st.builds(
                pb.Variant,
                name=text(TIGHT_LIMITS["max_text_chars"]),
                interventions=st.lists(interventions(), max_size=per_variant),
            ),
            max_size=TIGHT_LIMITS["max_variants"] + 1,
        )
    )
    settings_ = pb.GenerationSettings(
        max_new_tokens=draw(uint32(TIGHT_LIMITS["max_new_tokens"])),
        temperature=draw(double(3.0)),
        top_p=draw(double(1.0)),
        seed=draw(st.integers(0, 2**64 - 1)),
    )
    return pb.GenerateSteeredRequest(
        study=draw(studies()),
        task=draw(tasks()),
        settings=settings_,
        variants=variants,
        sae_id=draw(st.sampled_from(["", DEMO_SAE, "unknown"])),
    )


def analysis_fields(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "study": draw(studies()),
        "task": draw(tasks()),
        "sae_id": draw(st.sampled_from(["", DEMO_SAE, "unknown"])),
        "token_filter": draw(token_filters()),
    }
    response = draw(optional_text(TIGHT_LIMITS["max_text_chars"]))
    if response is not None:
        fields["response"] = response
    return fields


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, Any]:
    """(method name, request)."""
    top_k = TIGHT_LIMITS["max_top_k"]
    method = draw(
        st.sampled_from(["Encode", "TopFeatures", "GenerateSteered", "GetFeature", "Search"])
    )
    if method == "Encode":
        return method, pb.EncodeRequest(
            **analysis_fields(draw),
            top_k_per_token=draw(uint32(top_k)),
            matryoshka_level=draw(uint32(3)),
        )
    if method == "TopFeatures":
        return method, pb.TopFeaturesRequest(
            **analysis_fields(draw), aggregation=draw(enum_value(4)), k=draw(uint32(top_k))
        )
    if method == "GenerateSteered":
        return method, draw(generate_requests())
    if method == "GetFeature":
        return method, pb.GetFeatureRequest(
            sae_id=draw(st.sampled_from(["", DEMO_SAE, "x"])), feature=draw(uint32(D_SAE))
        )
    return "SearchFeatures", pb.SearchFeaturesRequest(
        sae_id=draw(st.sampled_from(["", DEMO_SAE, "x"])),
        query=draw(text(TIGHT_LIMITS["max_text_chars"])),
        limit=draw(uint32(top_k)),
    )


def invoke(stub: pb_grpc.MairaSaeServiceStub, method: str, request: Any) -> Callable[[], Any]:
    return lambda: getattr(stub, method)(request, timeout=60)


def test_random_requests_end_with_a_documented_status(tight_server, tight_stub, tight_info):
    assert (tight_info.saes[0].d_sae, tight_info.saes[0].d_model) == (D_SAE, D_MODEL)
    seen: dict[grpc.StatusCode, int] = {}

    @settings(
        max_examples=MIN_EXAMPLES,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(call=calls())
    def property_(call: tuple[str, Any]) -> None:
        method, request = call
        outcome = outcome_of(invoke(tight_stub, method, request))
        seen[outcome.code] = seen.get(outcome.code, 0) + 1
        assert outcome.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
            outcome.code,
            outcome.details,
        )
        assert outcome.code in DOCUMENTED_CODES, (outcome.code, outcome.details)
        if outcome.code != grpc.StatusCode.OK:
            assert outcome.details, "a refusal must say why"

    property_()
    print({code.name: count for code, count in seen.items()})
    assert sum(seen.values()) >= MIN_EXAMPLES
    assert seen.get(grpc.StatusCode.OK, 0) > 0, "some drawn requests must be valid"
    assert health_status(tight_server.target) == SERVING
