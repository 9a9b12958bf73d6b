"""Features as concept detectors: exact AUROC, labels, and the interpretation file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maira_sae.sae import FeatureCatalogue
from maira_sae.sae.interpretation import (
    ConceptAurocs,
    FeatureLabel,
    average_ranks,
    concept_aurocs,
    label_features,
    read_interpretations,
    study_scores,
    write_interpretations,
)


def test_auroc_matches_hand_computed_values_with_ties():
    labels = [True, True, False, False, False]
    scores = torch.tensor(
        [
            [3.0, 0.0, 1.0, 0.0],
            [2.0, 0.0, 1.0, 0.0],
            [1.0, 0.0, 1.0, 5.0],
            [0.0, 1.0, 0.0, 4.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    aurocs = concept_aurocs(scores, {"pacemaker": labels}).of("pacemaker")
    # Feature 0 separates perfectly. Feature 1: positives (0, 0) against negatives (0, 1, 0):
    # pairs won 0, tied 4, lost 2 -> (0 + 4 / 2) / 6 = 1/3. Feature 2: positives (1, 1) against
    # (1, 0, 0): won 4, tied 2 -> (4 + 1) / 6 = 5/6. Feature 3 ranks every negative above the
    # positives except one tie at 0: won 0, tied 2 -> 1/6.
    assert aurocs.tolist() == pytest.approx([1.0, 1 / 3, 5 / 6, 1 / 6])


def test_auroc_agrees_with_pairwise_counting_on_random_sparse_scores():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (60, 9), generator=generator).double()
    labels = (torch.rand(60, generator=generator) < 0.3).numpy()
    positive, negative = scores[labels], scores[~labels]
    wins = (positive[:, None] > negative[None]).double() + 0.5 * (
        positive[:, None] == negative[None]
    ).double()
    aurocs = concept_aurocs(scores, {"c": labels}).of("c")
    assert torch.allclose(aurocs, wins.mean(dim=(0, 1)))


def test_average_ranks_share_tied_ranks():
    ranks = average_ranks(torch.tensor([[0.0], [2.0], [0.0], [1.0]]))
    assert ranks[:, 0].tolist() == [1.5, 4.0, 1.5, 3.0]


def test_a_concept_without_negatives_is_refused():
    with pytest.raises(ValueError, match="'c' needs positive and negative"):
        concept_aurocs(torch.zeros(3, 2), {"c": [True, True, True]})
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        concept_aurocs(torch.zeros(3, 2), {"c": [True, False]})


def test_study_scores_take_each_studys_maximum():
    codes = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]])
    scores = study_scores(codes, torch.tensor([0, 0, 2]), 3)
    assert scores.tolist() == [[3.0, 2.0], [0.0, 0.0], [0.0, 5.0]]


def test_label_features_picks_the_best_concept_above_chance():
    table = ConceptAurocs(
        ("pacemaker", "cardiomegaly"),
        torch.tensor([[0.97, 0.5, 0.55], [0.6, 0.5, 0.9]], dtype=torch.float64),
    )
    assert label_features(table) == [
        FeatureLabel(0, "pacemaker", 0.97),
        FeatureLabel(2, "cardiomegaly", 0.9),
    ]
    assert [label.feature for label in label_features(table, min_auroc=0.95)] == [0]


def test_interpretations_file_loads_in_the_catalogue(tmp_path):
    labels = [FeatureLabel(7, "pleural_effusion", 0.812), FeatureLabel(2, "pacemaker", 0.9734)]
    path = write_interpretations(tmp_path / "interpretations.csv", labels)
    catalogue = FeatureCatalogue.from_file(path)
    assert len(catalogue) == 2
    pacemaker = catalogue.get(2)
    assert pacemaker is not None
    assert pacemaker.explanation == "pacemaker"  # plain words: no score inside the text
    assert pacemaker.score == pytest.approx(0.9734)
    assert pacemaker.provenance is not None
    assert pacemaker.provenance.explainer == "concept-annotations"
    assert pacemaker.provenance.scorer == "concept-auroc"
    assert pacemaker.provenance.concept_auroc == pytest.approx(0.9734)
    effusion = catalogue.search("pleural effusion")[0]
    assert (effusion.interpretation.feature, effusion.interpretation.explanation) == (
        7,
        "pleural effusion",
    )
    assert np.isclose(catalogue.get(7).score, 0.812)
    assert read_interpretations(path) == [
        FeatureLabel(2, "pacemaker", 0.9734),
        FeatureLabel(7, "pleural_effusion", 0.812),
    ]
