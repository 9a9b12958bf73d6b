"""Every method of the blocking Client against the real demo server."""

from __future__ import annotations

import json
import logging
import time

import pytest

from maira_sae.client import (
    Aggregation,
    Client,
    DeadlineExceededError,
    GenerationSettings,
    InvalidRequestError,
    MatchKind,
    NotFoundError,
    TokenEvent,
    TokenFilter,
    TokenKind,
    Variant,
    VariantResult,
)


def test_health_and_info(client):
    assert client.health() == "SERVING"
    assert client.health("maira_sae.v1.MairaSaeService") == "SERVING"
    info = client.info()
    assert (info.model.patch_grid_rows, info.model.patch_grid_cols) == (37, 37)
    assert info.default_sae_id == "demo-ef4-layer15"
    assert info.saes[0].d_sae == sum(info.saes[0].group_sizes)
    assert info.limits.max_top_k > 0
    assert info.limits.stream_buffer_events > 0 and info.limits.max_decode_rows > 0
    assert info.admission.priority_metadata_key == "x-maira-sae-priority"
    assert 0 < info.admission.long_call_places < info.limits.queue_size
    json.dumps(info.to_dict())


def test_dns_target_with_round_robin(demo_server):
    with Client(f"dns:///localhost:{demo_server.ports.grpc}") as client:
        assert [client.health() for _ in range(3)] == ["SERVING"] * 3


def test_encode_gives_typed_tokens_with_grid_positions(client, study):
    result = client.encode(study, response="No acute findings.", top_k_per_token=4)
    patches = [t.token for t in result.tokens if t.token.kind is TokenKind.IMAGE_PATCH]
    assert len(patches) == 37 * 37
    assert {(t.grid_row, t.grid_col) for t in patches} == {
        (r, c) for r in range(37) for c in range(37)
    }
    assert {t.image_index for t in patches} == {0}
    kinds = {t.token.kind for t in result.tokens}
    assert TokenKind.RESPONSE in kinds and TokenKind.SPECIAL not in kinds
    assert all(len(t.feature_ids) == len(t.values) <= 4 for t in result.tokens)
    fired = next(t for t in result.tokens if t.feature_ids)
    assert fired.activation(fired.feature_ids[0]) == fired.values[0] > 0
    assert fired.activation(10**6) == 0.0
    data = json.loads(json.dumps(result.to_dict()))
    assert data["tokens"][0]["token"]["kind"] in {k.value for k in TokenKind}


def test_encode_token_filter(client, study):
    result = client.encode(
        study, token_filter=TokenFilter(kinds=frozenset({TokenKind.PROMPT_TEXT}))
    )
    assert {t.token.kind for t in result.tokens} == {TokenKind.PROMPT_TEXT}
    assert result.total_tokens > len(result.tokens)


def test_top_features_with_labels_and_grids(client, study):
    result = client.top_features(study, k=10, aggregation=Aggregation.MAX)
    assert 0 < len(result.features) <= 10
    scores = [f.score for f in result.features]
    assert scores == sorted(scores, reverse=True)
    assert any(f.label for f in result.features)
    grid = next(g for f in result.features for g in f.image_grids)
    assert grid.to_array().shape == (37, 37) and grid.to_array().max() > 0
    json.dumps(result.to_dict())


def test_generate_streams_tokens_then_results_per_variant(client, study):
    variants = [Variant(name="baseline"), Variant.of("add", "3:add:60")]
    settings = GenerationSettings(max_new_tokens=6)
    with client.generate_steered(study, variants, settings=settings) as stream:
        events = list(stream)
    finals = {e.variant_index: e for e in events if isinstance(e, VariantResult)}
    assert sorted(finals) == [0, 1]
    for index, final in finals.items():
        pieces = [e.text for e in events if isinstance(e, TokenEvent) and e.variant_index == index]
        assert "".join(pieces) == final.text and final.num_tokens == 6
    texts = client.generate_texts(study, variants, settings=settings)
    assert [r.text for r in texts] == [finals[0].text, finals[1].text]
    assert texts[1].text != texts[0].text


def test_closing_the_stream_cancels_the_call(client, study, caplog):
    caplog.set_level(logging.INFO, logger="maira_sae.access")
    stream = client.generate_steered(study, settings=GenerationSettings(max_new_tokens=1000))
    assert isinstance(next(stream), TokenEvent)
    started = time.monotonic()
    stream.close()
    assert list(stream) == []
    while not any(
        '"CANCELLED"' in r.message and "GenerateSteered" in r.message for r in caplog.records
    ):
        assert time.monotonic() - started < 5, "the server never saw the cancellation"
        time.sleep(0.02)


def test_deadline_is_respected(client, study):
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        client.generate_texts(study, settings=GenerationSettings(max_new_tokens=1000), timeout=0.3)
    assert time.monotonic() - started < 2.0
    with pytest.raises(DeadlineExceededError):
        client.encode(study, timeout=0.001)


def test_feature_and_search(client):
    matches = client.search_features("pacemaker", limit=3).matches
    assert 0 < len(matches) <= 3 and all("pacemaker" in m.feature.label for m in matches)
    assert {m.kind for m in matches} == {MatchKind.PHRASE}
    feature = client.feature(matches[0].feature.feature)
    assert feature.label == matches[0].feature.label
    assert feature.decoder_norm == pytest.approx(1.0, abs=1e-4)
    assert feature.provenance is None  # the random demo's file has three columns
    assert len(feature.nearest_features) == 10
    cosines = [n.cosine for n in feature.nearest_features]
    assert cosines == sorted(cosines, reverse=True) and all(-1 <= c <= 1 for c in cosines)
    assert feature.feature not in {n.feature for n in feature.nearest_features}


def test_search_by_activation(client):
    found = client.search_by_activation("Small left pleural effusion.", limit=4)
    assert len(found.matches) == 4 and found.activation_tokens[0] == "<s>"
    activations = [m.score for m in found.matches]
    assert activations == sorted(activations, reverse=True) and activations[-1] > 0
    assert all(m.kind is MatchKind.ACTIVATION for m in found.matches)
    assert all(found.activation_tokens[m.token_index] == m.token_text for m in found.matches)
    with pytest.raises(InvalidRequestError) as blank:
        client.search_by_activation("   ")
    assert blank.value.code.name == "INVALID_ARGUMENT" and "blank" in blank.value.message


def test_errors_carry_family_code_and_server_message(client, study):
    with pytest.raises(NotFoundError) as missing:
        client.encode(study, sae_id="nope")
    assert "nope" in missing.value.message and missing.value.request_id
    with pytest.raises(InvalidRequestError) as out_of_range:
        client.feature(10**6)
    assert out_of_range.value.code.name == "OUT_OF_RANGE"
