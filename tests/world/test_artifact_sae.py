"""The shipped world artifact's SAE, measured on studies it never saw: do the labelled concept
features detect their concepts, and does steering the pacemaker feature write pacemakers?"""

from __future__ import annotations

import pytest
import torch

from maira_sae.sae import FeatureCatalogue, SteeringMode, load_sae
from maira_sae.sae.interpretation import (
    FeatureLabel,
    concept_aurocs,
    read_interpretations,
    study_scores,
)
from maira_sae.server.demo_checkpoint import INTERPRETATIONS_FILE, MODEL_FOLDER, SAE_FOLDER
from maira_sae.server.engine.engine import Engine, SaeEntry
from maira_sae.server.engine.harvest import HarvestFilter, harvest_activations
from maira_sae.server.folder_training import load_model_and_processor
from maira_sae.server.world.artifact import ensure_world_demo
from maira_sae.server.world.model_spec import SAE_LAYER
from maira_sae.server.world.reports import (
    CARDIOMEGALY,
    CONCEPTS,
    LINE_OR_TUBE,
    PACEMAKER,
    PLEURAL_EFFUSION,
)
from maira_sae.server.world.steering_eval import evaluate_steering, format_curve
from maira_sae.server.world.studies import world_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HELD_OUT_SEED = 3000  # the model trained on seed 1000 (+1 to evaluate), the SAE on 2000
# Each concept's top labelled feature (by its build-time AUROC), over held-out studies. Measured:
# pacemaker 0.974, line_or_tube 0.902, pleural_effusion 0.820; cardiomegaly has no feature
# labelled (none reaches the labelling AUROC of 0.8: the model barely writes it, F1 0.22).
MIN_HELD_OUT_AUROC = {PACEMAKER: 0.9, LINE_OR_TUBE: 0.85, PLEURAL_EFFUSION: 0.75}
MIN_STEERING_GAIN = 0.3  # best steered pacemaker rate minus the baseline rate (measured 0.8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = ensure_world_demo(tmp_path_factory.mktemp("world") / "demo")
    model, processor = load_model_and_processor(
        str(folder / MODEL_FOLDER), device=torch.device("cpu")
    )
    sae = load_sae(folder / SAE_FOLDER)
    labels = read_interpretations(folder / INTERPRETATIONS_FILE)
    catalogue = FeatureCatalogue.from_file(folder / INTERPRETATIONS_FILE)
    engine = Engine(model, processor, [SaeEntry("world", sae, catalogue, SAE_LAYER)])
    return engine, labels


@pytest.fixture(scope="module")
def held_out(world):
    """Studies neither the model nor the SAE saw, harvested as the build harvests, and their
    SAE codes."""
    engine, _ = world
    studies = world_dataset(60, HELD_OUT_SEED)
    tokens = harvest_activations(
        engine.model,
        engine.processor,
        [study.to_study() for study in studies],
        SAE_LAYER,
        reports=[study.findings for study in studies],
        token_filter=HarvestFilter(drop_boilerplate=True),
        batch_size=8,
    )
    return studies, tokens, engine.sae("").sae.encode(tokens.activations)


def test_top_concept_features_detect_their_concepts_on_held_out_studies(world, held_out):
    _, labels = world
    studies, tokens, codes = held_out
    aurocs = concept_aurocs(
        study_scores(codes, tokens.study_index, len(studies)),
        {c: [c in study.concepts for study in studies] for c in CONCEPTS},
    )
    measured = {
        concept: float(aurocs.of(concept)[_top_labelled(labels, concept).feature])
        for concept in MIN_HELD_OUT_AUROC
    }
    print(measured)
    assert all(measured[c] >= MIN_HELD_OUT_AUROC[c] for c in MIN_HELD_OUT_AUROC), measured
    assert not [label for label in labels if label.concept == CARDIOMEGALY]


def test_steering_the_pacemaker_feature_raises_the_pacemaker_rate(world, held_out):
    """The strongest pacemaker-labelled feature (the one the demo's TopFeatures puts first),
    clamped and added at its largest held-out activation and 1.5 times it, at every position."""
    engine, labels = world
    studies, _, codes = held_out
    pacemaker_features = [label.feature for label in labels if label.concept == PACEMAKER]
    feature = max(pacemaker_features, key=lambda f: float(codes[:, f].max()))
    peak = float(codes[:, feature].max())
    curve = evaluate_steering(
        engine,
        [study.to_study() for study in studies if PACEMAKER not in study.concepts][:10],
        feature=feature,
        concept=PACEMAKER,
        strengths=[peak, 1.5 * peak],
        modes=(SteeringMode.ADD, SteeringMode.CLAMP),
        max_new_tokens=48,
    )
    print(format_curve(curve))
    best = max(point.concept_rate for point in curve.points)
    assert best >= curve.baseline_concept_rate + MIN_STEERING_GAIN, format_curve(curve)


def _top_labelled(labels: list[FeatureLabel], concept: str) -> FeatureLabel:
    return max((label for label in labels if label.concept == concept), key=lambda x: x.auroc)
