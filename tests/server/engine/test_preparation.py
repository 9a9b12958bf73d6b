"""A request's checks before it is queued (demo checkpoint): the SAE's interpretations for
labelled_only, and every intervention against the SAE, each error naming its field."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from maira_sae.sae.catalogue import FeatureCatalogue
from maira_sae.sae.interventions import Intervention, SteeringMode
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.types import (
    GenerateRequest,
    ScopedIntervention,
    TopFeaturesRequest,
    Variant,
)
from maira_sae.server.errors import FailedPrecondition, InvalidArgument, OutOfRange


@pytest.fixture(scope="module")
def engine(demo_engine) -> Engine:
    return demo_engine


def test_labelled_only_needs_interpretations(engine, study):
    entry = engine.sae("")
    unlabelled = replace(entry, catalogue=FeatureCatalogue.empty())
    bare = Engine(engine.model, engine.processor, [unlabelled])
    with pytest.raises(FailedPrecondition, match="labelled_only needs interpretations"):
        bare.prepare_analysis(TopFeaturesRequest(study=study, labelled_only=True))
    assert bare.prepare_analysis(TopFeaturesRequest(study=study))  # without the flag: served


@pytest.mark.parametrize(
    ("intervention", "error", "words"),
    [
        (Intervention(SteeringMode.ADD, 1.0, feature=10**6), OutOfRange, ".feature 1000000 is out"),
        (
            Intervention(SteeringMode.ADD, 1.0, direction=torch.tensor([1.0, float("nan")] * 32)),
            InvalidArgument,
            "a raw direction must be finite and non-zero",
        ),
        (
            Intervention(SteeringMode.ADD, 1.0, direction=torch.zeros(64)),
            InvalidArgument,
            "a raw direction must be finite and non-zero",
        ),
        (
            Intervention(SteeringMode.ADD, 1.0, direction=torch.zeros(0)),
            InvalidArgument,
            "a raw direction must have length d_model = 64, got shape (0,)",
        ),
    ],
)
def test_interventions_are_checked_once_against_the_sae(engine, study, intervention, error, words):
    variant = Variant((ScopedIntervention(intervention),))
    request = GenerateRequest(study=study, variants=(Variant(), variant))
    with pytest.raises(error) as info:
        engine.check_generate(request)
    assert str(info.value).startswith("variants[1].interventions[0]")
    assert words in str(info.value)
