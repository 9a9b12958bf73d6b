"""Finding and reading the world's features on a real server: the labels as plain explanations
with their provenance, search ranked by match quality then score, search by activation checked
against the model run by hand, and the nearest features checked against the decoder."""

from __future__ import annotations

import grpc
import pytest
import torch
from transformers import AutoTokenizer

from maira_sae.sae.formats import load_sae
from maira_sae.sae.interpretation import read_interpretations
from maira_sae.sae.interpretation_file import read_interpretation_file
from maira_sae.server.demo.layout import INTERPRETATIONS_FILE, MODEL_FOLDER, SAE_FOLDER
from maira_sae.server.demo.world.materialise import ARTIFACT_DIR
from maira_sae.server.demo.world.model_spec import SAE_LAYER
from maira_sae.server.demo.world.reports import CONCEPTS
from maira_sae.server.training.folder_training import load_model_and_processor
from maira_sae.v1 import maira_sae_pb2 as pb

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PACEMAKER_FEATURE = 4
MAX_ACTIVATION_TEXT_TOKENS = 256  # limits.max_activation_text_tokens by default


@pytest.fixture(scope="module")
def stub(world_stub):
    return world_stub


@pytest.fixture(scope="module")
def labels(world_demo):
    return {
        label.feature: label for label in read_interpretations(world_demo / INTERPRETATIONS_FILE)
    }


def test_the_shipped_labels_are_plain_explanations_with_the_auroc_in_its_own_column():
    records = read_interpretation_file(ARTIFACT_DIR / INTERPRETATIONS_FILE)
    assert len(records) == 21
    words = {concept.replace("_", " ") for concept in CONCEPTS}
    assert {record.explanation for record in records} <= words
    assert {"pacemaker", "line or tube", "pleural effusion"} <= {r.explanation for r in records}
    for record in records:
        assert record.score == record.concept_auroc and 0.8 < record.score <= 1
        assert (record.explainer, record.scorer) == ("concept-annotations", "concept-auroc")
        assert record.auroc is None and record.n_activating is None  # no detection scoring
    labels = read_interpretations(ARTIFACT_DIR / INTERPRETATIONS_FILE)
    assert {label.concept for label in labels} <= set(CONCEPTS)  # underscores back
    assert [label.feature for label in labels] == [record.feature for record in records]


def test_get_feature_returns_the_explanation_its_score_and_where_it_came_from(stub, labels):
    reply = stub.GetFeature(pb.GetFeatureRequest(feature=PACEMAKER_FEATURE)).feature
    assert reply.label == "pacemaker"
    assert reply.interpretation_score == pytest.approx(labels[PACEMAKER_FEATURE].auroc)
    provenance = reply.provenance
    assert (provenance.explainer, provenance.scorer) == ("concept-annotations", "concept-auroc")
    assert provenance.concept_auroc == pytest.approx(labels[PACEMAKER_FEATURE].auroc)
    assert provenance.created == "2026-11-29"
    assert not provenance.explainer_model
    assert not provenance.HasField("auroc") and not provenance.HasField("num_activating")
    unlabelled = next(f for f in range(64) if f not in labels)
    bare = stub.GetFeature(pb.GetFeatureRequest(feature=unlabelled)).feature
    assert not bare.HasField("label") and not bare.HasField("provenance")


def test_nearest_features_are_the_decoder_rows_of_highest_cosine(stub, world_demo, labels):
    reply = stub.GetFeature(pb.GetFeatureRequest(feature=PACEMAKER_FEATURE, num_nearest=6)).feature
    decoder = load_sae(world_demo / SAE_FOLDER).W_dec.detach().float()
    cosines = torch.nn.functional.cosine_similarity(decoder, decoder[PACEMAKER_FEATURE][None])
    cosines[PACEMAKER_FEATURE] = -2
    expected = cosines.topk(6)
    assert [n.feature for n in reply.nearest_features] == expected.indices.tolist()
    assert [n.cosine for n in reply.nearest_features] == pytest.approx(
        expected.values.tolist(), abs=1e-5
    )
    for nearest in reply.nearest_features:
        label = labels.get(nearest.feature)
        assert nearest.HasField("label") == (label is not None)
        if label is not None:
            assert nearest.label == label.concept.replace("_", " ")
    default = stub.GetFeature(pb.GetFeatureRequest(feature=PACEMAKER_FEATURE)).feature
    assert len(default.nearest_features) == 10


def test_an_exact_label_comes_before_a_phrase_and_ties_go_to_the_higher_score(stub, labels):
    exact = stub.SearchFeatures(pb.SearchFeaturesRequest(query="Pacemakers", limit=50)).matches
    pacemakers = sorted(
        (f for f, label in labels.items() if label.concept == "pacemaker"),
        key=lambda f: (-labels[f].auroc, f),
    )
    assert [m.feature.feature for m in exact] == pacemakers
    assert {m.kind for m in exact} == {pb.MATCH_KIND_EXACT}
    tube = stub.SearchFeatures(pb.SearchFeaturesRequest(query="tube", limit=50)).matches
    assert tube and {m.kind for m in tube} == {pb.MATCH_KIND_PHRASE}
    assert {m.feature.label for m in tube} == {"line or tube"}
    scores = [m.feature.interpretation_score for m in tube]
    assert scores == sorted(scores, reverse=True)
    typo = stub.SearchFeatures(pb.SearchFeaturesRequest(query="pleural efusion", limit=50))
    phrase = stub.SearchFeatures(pb.SearchFeaturesRequest(query="pleural effusion", limit=50))
    assert {m.kind for m in phrase.matches} == {pb.MATCH_KIND_EXACT}
    assert {m.kind for m in typo.matches} == {pb.MATCH_KIND_PARTIAL}
    assert {m.feature.feature for m in typo.matches} == {m.feature.feature for m in phrase.matches}


def strongest_features_by_hand(world_demo, text: str, k: int) -> tuple[list[str], list, list]:
    """The text's tokens and its k strongest features, computed without the server: the
    tokenizer, the language model's hidden states and the SAE, max over the text's tokens."""
    folder = world_demo / MODEL_FOLDER
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id
    model, _ = load_model_and_processor(str(folder), device=torch.device("cpu"))
    with torch.inference_mode():
        hidden = model.model.language_model(
            input_ids=torch.tensor([ids]), output_hidden_states=True
        ).hidden_states[SAE_LAYER + 1][0]
        codes = load_sae(world_demo / SAE_FOLDER).encode(hidden)[1:]  # the text's own tokens
    peaks, where = codes.max(dim=0)
    values, features = peaks.topk(k)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    return pieces, list(zip(features.tolist(), values.tolist(), strict=True)), where


def test_search_by_activation_returns_the_features_that_fire_most_on_the_text(
    stub, world_demo, labels
):
    text = "A pacemaker is seen."
    reply = stub.SearchFeatures(pb.SearchFeaturesRequest(activation_text=text, limit=8))
    pieces, expected, where = strongest_features_by_hand(world_demo, text, 8)
    assert len(reply.activation_tokens) == len(pieces)
    assert reply.activation_tokens[0] == "<s>"
    assert [token.strip() for token in reply.activation_tokens[1:]] == [
        piece.replace("▁", " ").strip() for piece in pieces[1:]
    ]
    assert [m.feature.feature for m in reply.matches] == [f for f, _ in expected]
    assert [m.score for m in reply.matches] == pytest.approx([v for _, v in expected], rel=1e-3)
    for match in reply.matches:
        assert match.kind == pb.MATCH_KIND_ACTIVATION
        assert match.token_index == 1 + int(where[match.feature.feature])
        assert match.token_text == reply.activation_tokens[match.token_index]
        label = labels.get(match.feature.feature)
        assert match.feature.HasField("label") == (label is not None)


def test_search_by_activation_finds_a_labelled_pacemaker_feature_for_pacemaker(stub, labels):
    reply = stub.SearchFeatures(pb.SearchFeaturesRequest(activation_text="pacemaker", limit=10))
    found = [m.feature.label for m in reply.matches if m.feature.HasField("label")]
    print(f"\nlabels among the 10 strongest features on 'pacemaker': {found}")
    assert "pacemaker" in found


def words_of(count: int) -> str:
    """A text of ``count`` tokens (each " pacemaker" is one token of the world's tokenizer)."""
    return " ".join(["pacemaker"] * count)


def test_a_text_at_the_token_limit_is_searched(stub):
    at_limit = words_of(MAX_ACTIVATION_TEXT_TOKENS - 1)  # and BOS
    reply = stub.SearchFeatures(pb.SearchFeaturesRequest(activation_text=at_limit))
    assert len(reply.activation_tokens) == MAX_ACTIVATION_TEXT_TOKENS and reply.matches


@pytest.mark.parametrize(
    ("request_message", "code", "words"),
    [
        (pb.SearchFeaturesRequest(activation_text="  "), "INVALID_ARGUMENT", "blank"),
        (pb.SearchFeaturesRequest(), "INVALID_ARGUMENT", "query is required"),
        (
            pb.SearchFeaturesRequest(query="heart", activation_text="heart"),
            "INVALID_ARGUMENT",
            "not both",
        ),
        (
            pb.SearchFeaturesRequest(activation_text=words_of(MAX_ACTIVATION_TEXT_TOKENS)),
            "OUT_OF_RANGE",
            f"{MAX_ACTIVATION_TEXT_TOKENS + 1} tokens (BOS included), over "
            f"limits.max_activation_text_tokens = {MAX_ACTIVATION_TEXT_TOKENS}",
        ),
        (
            pb.SearchFeaturesRequest(activation_text="heart", sae_id="missing"),
            "NOT_FOUND",
            "unknown sae_id",
        ),
    ],
)
def test_bad_activation_searches_get_precise_statuses(stub, request_message, code, words):
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchFeatures(request_message)
    assert error.value.code() == getattr(grpc.StatusCode, code)
    assert words in error.value.details()
    assert stub.SearchFeatures(pb.SearchFeaturesRequest(activation_text="heart")).matches


def test_the_limit_is_reported_in_get_info(stub):
    limits = stub.GetInfo(pb.GetInfoRequest()).limits
    assert limits.max_activation_text_tokens == MAX_ACTIVATION_TEXT_TOKENS
