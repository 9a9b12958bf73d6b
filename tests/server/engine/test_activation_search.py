"""Search by activation in the engine, on the demo checkpoint: the text alone through the
language model, the same alone and batched beside studies, routed through the scheduler."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from maira_sae.server.engine.async_engine import AsyncEngine
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.hooks import capture_residuals, run_until_stopped
from maira_sae.server.engine.types import (
    ActivationSearchRequest,
    EncodeRequest,
    FeatureSearchResult,
    MatchKind,
)
from maira_sae.server.errors import NotFound, OutOfRange
from maira_sae.server.maira2.study import Study
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image
from maira_sae.server.maira2.tokens import TokenKind
from maira_sae.server.service.metrics import Metrics
from maira_sae.server.service.runtime import load_runtime
from tests.support.servers import demo_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "Enlarged heart. No pleural effusion."


@pytest.fixture(scope="module")
def engine(demo_checkpoint) -> Engine:
    return load_runtime(demo_config(demo_checkpoint), Metrics()).engine


def search(engine: Engine, text: str = TEXT, limit: int = 5) -> FeatureSearchResult:
    prepared = engine.prepare_activation_search(ActivationSearchRequest(text, limit))
    (result,) = engine.analyse([prepared])
    return result


def test_the_text_runs_alone_with_bos_and_no_image(engine):
    inputs = engine.prepare_activation_search(ActivationSearchRequest(TEXT, 5)).inputs
    assert (inputs.tokens[0].text, inputs.tokens[0].kind) == ("<s>", TokenKind.SPECIAL)
    assert {t.kind for t in inputs.tokens[1:]} == {TokenKind.PROMPT_TEXT}
    assert inputs.pixel_values.shape[0] == 0 and not inputs.images


def test_matches_are_the_strongest_features_over_the_texts_tokens(engine):
    entry = engine.sae("")
    inputs = engine.prepare_activation_search(ActivationSearchRequest(TEXT, 5)).inputs
    with (
        torch.inference_mode(),
        capture_residuals(engine.model.decoder_layers, {entry.layer}, stop_after_last=True) as got,
    ):
        run_until_stopped(lambda: engine.model(input_ids=inputs.input_ids[None]))
    codes = entry.sae.encode(got[entry.layer][0])[1:]  # BOS left out
    peaks = codes.max(dim=0).values
    result = search(engine, limit=5)
    assert [m.description.feature for m in result.matches] == peaks.topk(5).indices.tolist()
    assert [m.score for m in result.matches] == pytest.approx(peaks.topk(5).values.tolist())
    assert result.activation_tokens == tuple(t.text for t in inputs.tokens)
    for match in result.matches:
        assert match.kind is MatchKind.ACTIVATION
        assert match.token_index >= 1  # never BOS
        column = codes[:, match.description.feature]
        assert float(column[match.token_index - 1]) == pytest.approx(match.score)
        assert match.token_text == result.activation_tokens[match.token_index]
        assert match.description.interpretation == entry.catalogue.get(match.description.feature)


def test_the_same_alone_and_batched_beside_studies(engine):
    alone = search(engine)
    image = synthetic_chest_image()
    batch = [
        engine.prepare_analysis(EncodeRequest(study=Study(frontal=image, indication="Cough."))),
        engine.prepare_activation_search(ActivationSearchRequest(TEXT, 5)),
        engine.prepare_activation_search(ActivationSearchRequest("Pacemaker in place.", 3)),
    ]
    encoded, batched, other = engine.analyse(batch)
    assert encoded.tokens and len(other.matches) == 3
    assert [m.description.feature for m in batched.matches] == [
        m.description.feature for m in alone.matches
    ]
    assert np.allclose(
        [m.score for m in batched.matches], [m.score for m in alone.matches], atol=1e-4
    )


def test_limits_and_unknown_sae(engine):
    limit = engine.token_limits.max_activation_text_tokens
    with pytest.raises(OutOfRange, match="max_activation_text_tokens"):
        engine.prepare_activation_search(ActivationSearchRequest("heart " * limit, 5))
    with pytest.raises(NotFound, match="unknown sae_id"):
        engine.prepare_activation_search(ActivationSearchRequest(TEXT, 5, sae_id="nope"))
    assert len(search(engine, limit=1).matches) == 1


def test_it_is_queued_through_the_scheduler_like_an_analysis(engine):
    scheduler = AsyncEngine(engine, queue_size=4, max_batch_size=4, batch_window_s=0.0)

    async def run() -> FeatureSearchResult:
        with scheduler.admit() as admission:
            prepared = engine.prepare_activation_search(ActivationSearchRequest(TEXT, 5))
            return await scheduler.analyse(prepared, None, admission)

    scheduler.start()
    try:
        queued = asyncio.run(run())
    finally:
        scheduler.close()
    assert queued == search(engine)
