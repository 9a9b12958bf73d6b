"""The SDK's typed exceptions carry the google.rpc details a real server sends: the reason, the
field path of a bad field, the limit, the missing resource and the unmet precondition."""

from __future__ import annotations

from dataclasses import replace

import pytest

from maira_sae.client import (
    AuthenticationError,
    Client,
    FailedPreconditionError,
    FieldViolation,
    Intervention,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    ResourceInfo,
    SteeringMode,
    Variant,
)


def test_out_of_range_names_the_field_path_and_the_limit(client, study):
    with pytest.raises(OutOfRangeError) as info:
        client.top_features(study, k=100_000)
    error = info.value
    assert error.reason == "LIMIT_EXCEEDED"
    assert error.details.domain == "maira-sae.v1"
    assert error.field_violations == (FieldViolation("k", error.message, "LIMIT_EXCEEDED"),)
    max_top_k = client.info().limits.max_top_k
    assert error.metadata == {"limit": "max_top_k", "limitValue": str(max_top_k), "value": "100000"}


def test_a_nested_field_path(client, study):
    edit = Intervention(mode=SteeringMode.ADD, feature=10**6, value=1.0)
    with pytest.raises(OutOfRangeError) as info:
        client.generate_steered(study, [Variant(), Variant("far", (edit,))]).results()
    assert info.value.field == "variants[1].interventions[0].feature"
    assert info.value.reason == "FEATURE_OUT_OF_RANGE"


def test_invalid_argument_names_the_field(client, study):
    with pytest.raises(InvalidArgumentError) as info:
        client.encode(replace(study, indication="a\x00b"))
    assert info.value.field == "study.indication"
    assert info.value.reason == "TEXT_HAS_NUL"


def test_not_found_names_the_resource(client):
    with pytest.raises(NotFoundError) as info:
        client.feature(0, sae_id="no-such-sae")
    assert info.value.reason == "SAE_NOT_FOUND"
    assert info.value.resource == ResourceInfo("sae", "no-such-sae", info.value.message)
    assert info.value.metadata["knownSaeIds"] == "demo-ef4-layer15"


def test_failed_precondition_names_the_condition(demo_checkpoint, study):
    from maira_sae.server.service.config import AuthConfig, SaeSpec
    from tests.support.servers import demo_config, running_server

    unlabelled = SaeSpec(id="unlabelled", path=demo_checkpoint.sae_dir)
    config = demo_config(demo_checkpoint, saes=(unlabelled,), auth=AuthConfig(token="t0ken"))
    with running_server(config) as server:
        client = Client(server.target, token="t0ken", timeout_s=60)
        with client, pytest.raises(FailedPreconditionError) as info:
            client.top_features(study, labelled_only=True)
        anonymous = Client(server.target, timeout_s=60)
        with anonymous, pytest.raises(AuthenticationError) as unauthenticated:
            anonymous.info()
    assert info.value.reason == "NO_INTERPRETATIONS"
    (violation,) = info.value.precondition_violations
    assert (violation.type, violation.subject) == ("INTERPRETATIONS", "sae/unlabelled")
    assert unauthenticated.value.reason == "TOKEN_MISSING"
    assert unauthenticated.value.request_id
