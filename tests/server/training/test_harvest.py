"""Harvesting layer activations on the demo checkpoint: shapes, kinds, filters, and equality
with what the server's own Encode computes."""

from __future__ import annotations

import pytest
import torch

from maira_sae.sae import FeatureCatalogue, load_sae
from maira_sae.server.demo.random_checkpoint import SAE_LAYER
from maira_sae.server.engine.engine import Engine, SaeEntry
from maira_sae.server.engine.types import EncodeRequest, TokenFilter
from maira_sae.server.maira2.study import Study, Task
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image
from maira_sae.server.maira2.tokens import TokenKind
from maira_sae.server.training.folder_training import load_model_and_processor
from maira_sae.server.training.harvest import HarvestFilter, harvest_activations

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPORT = "Left pleural effusion."
GRID = 37  # the demo's patch grid, as MAIRA-2's


@pytest.fixture(scope="module")
def loaded(demo_checkpoint):
    return load_model_and_processor(str(demo_checkpoint.model_dir), device=torch.device("cpu"))


@pytest.fixture(scope="module")
def studies():
    image = synthetic_chest_image()
    return [
        Study(frontal=image, indication="Chest pain."),
        Study(frontal=image[::-1].copy(), indication="Fever and cough.", comparison="None."),
    ]


@pytest.fixture(scope="module")
def harvest(loaded, studies):
    model, processor = loaded
    return harvest_activations(model, processor, studies, SAE_LAYER, reports=[REPORT, None])


def test_every_kept_token_has_its_activation_kind_study_and_position(loaded, studies, harvest):
    _, processor = loaded
    assert harvest.activations.shape == (len(harvest), 64) and harvest.num_studies == 2
    assert harvest.activations.dtype == torch.float32
    assert not harvest.of_kind(TokenKind.SPECIAL).any()  # <s> and </s> left out by default
    for index, study in enumerate(studies):
        tokens = processor.process(study, task=Task(), response=REPORT if index == 0 else None)
        mine = harvest.study_index == index
        expected = [t for t in tokens.tokens if t.kind is not TokenKind.SPECIAL]
        assert harvest.position[mine].tolist() == [t.position for t in expected]
        assert harvest.token_ids[mine].tolist() == [t.token_id for t in expected]
        image_tokens = harvest.of_kind(TokenKind.IMAGE_PATCH) & mine
        assert int(image_tokens.sum()) == GRID * GRID
    response = harvest.of_kind(TokenKind.RESPONSE)
    assert response.any() and (harvest.study_index[response] == 0).all()


def test_harvest_equals_the_servers_encode_of_the_same_study(
    loaded, studies, harvest, demo_checkpoint
):
    model, processor = loaded
    sae = load_sae(demo_checkpoint.sae_dir)
    engine = Engine(model, processor, [SaeEntry("demo", sae, FeatureCatalogue.empty(), SAE_LAYER)])
    request = EncodeRequest(
        studies[0], response=REPORT, top_k_per_token=0, token_filter=TokenFilter()
    )
    (result,) = engine.analyse([engine.prepare_analysis(request)])
    mine = harvest.study_index == 0
    codes = sae.encode(harvest.activations[mine])
    assert [t.token.position for t in result.tokens] == harvest.position[mine].tolist()
    for row, token in enumerate(result.tokens):
        active = codes[row].nonzero().flatten()
        assert sorted(token.feature_ids) == active.tolist()
        assert torch.allclose(torch.tensor(token.values), codes[row][list(token.feature_ids)])


def test_batching_does_not_change_the_activations(loaded, studies, harvest):
    model, processor = loaded
    alone = harvest_activations(
        model, processor, studies, SAE_LAYER, reports=[REPORT, None], batch_size=1
    )
    assert torch.equal(alone.position, harvest.position)
    assert torch.allclose(alone.activations, harvest.activations, atol=1e-5)


def test_filters_thin_image_patches_and_drop_prompt_boilerplate(loaded, studies, harvest):
    model, processor = loaded
    thinned = harvest_activations(
        model,
        processor,
        studies,
        SAE_LAYER,
        reports=[REPORT, None],
        token_filter=HarvestFilter(image_patch_stride=2, drop_boilerplate=True),
    )
    per_image = ((GRID + 1) // 2) ** 2  # rows and columns 0, 2, ..., 36
    assert int(thinned.of_kind(TokenKind.IMAGE_PATCH).sum()) == 2 * per_image
    assert int(thinned.of_kind(TokenKind.RESPONSE).sum()) == int(
        harvest.of_kind(TokenKind.RESPONSE).sum()
    )
    kept_text = {
        index: "".join(
            processor.token_text(token_id)
            for token_id in thinned.token_ids[
                thinned.of_kind(TokenKind.PROMPT_TEXT) & (thinned.study_index == index)
            ].tolist()
        )
        for index in range(2)
    }
    # The study's own words stay; the instruction, the headers and the "N/A"s go.
    assert kept_text == {0: " Chest pain.", 1: " Fever and cough. None."}
    rows = thinned.activations[thinned.of_kind(TokenKind.IMAGE_PATCH)]
    original = harvest.activations[harvest.of_kind(TokenKind.IMAGE_PATCH)]
    assert torch.equal(rows[0], original[0])  # patch (0, 0) of the first image is kept


def test_image_patches_can_be_left_out_entirely(loaded, studies):
    model, processor = loaded
    kinds = frozenset({TokenKind.PROMPT_TEXT, TokenKind.RESPONSE})
    text_only = harvest_activations(
        model, processor, studies[:1], SAE_LAYER, token_filter=HarvestFilter(kinds=kinds)
    )
    assert len(text_only) > 0 and not text_only.of_kind(TokenKind.IMAGE_PATCH).any()
