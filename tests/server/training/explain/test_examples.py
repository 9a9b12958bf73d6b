"""Example construction over a hand-made activation table: explain and held-out studies are
disjoint, held-out activating examples span the quantiles, non-activating ones never fire."""

from __future__ import annotations

import numpy as np
import pytest

from maira_sae.server.training.explain.examples import (
    ExampleSettings,
    ExampleSource,
    StudyActivations,
    StudyRecord,
)
from maira_sae.server.training.explain.protocols import ExampleKind

STUDIES = 120


def table() -> StudyActivations:
    """Feature 0 fires on a film patch in studies 0-59 (peak = index + 1), feature 1 on the
    text token "tube" in every third study, feature 2 never."""
    rng = np.random.default_rng(0)
    peak = np.zeros((STUDIES, 3), dtype=np.float32)
    peak[:60, 0] = np.arange(1, 61)
    peak[::3, 1] = rng.uniform(1, 5, size=STUDIES // 3)
    text_index = np.full((STUDIES, 3), -1, dtype=np.int32)
    text_index[:, 1] = 2
    records = tuple(
        StudyRecord(
            f"study-{i:03d}",
            f"Findings: study {i}.",
            (5, 6, 7 if i % 2 else 8, 9),
            (" The", " endotracheal", " tube" if i % 2 else " line", " terminates."),
        )
        for i in range(STUDIES)
    )
    small = np.ones((STUDIES, 3), dtype=np.int16)
    return StudyActivations(records, (0, 1, 2), peak, text_index, small, small * 2, small * 3)


@pytest.fixture(scope="module")
def source() -> ExampleSource:
    return ExampleSource(table(), ExampleSettings(top=10, contrast=12, non_activating=10))


def test_only_features_that_fire_are_live(source):
    assert source.features() == [0, 1]
    assert source.floor(0) == 0.0


def test_explain_and_held_out_examples_come_from_disjoint_studies(source):
    examples = source.for_feature(0)
    explain = {e.study_id for e in (*examples.explain, *examples.contrast)}
    held_out = {e.study_id for e in (*examples.activating, *examples.non_activating)}
    assert explain and held_out and not explain & held_out
    peaks = [e.activation for e in examples.explain]
    assert peaks[:10] == sorted(peaks[:10], reverse=True)  # the top ones first
    assert all(e.activation > 0 for e in (*examples.explain, *examples.activating))
    assert all(e.activation == 0 for e in (*examples.contrast, *examples.non_activating))
    assert len(examples.non_activating) == 10 and len(examples.contrast) == 12


def test_held_out_activating_examples_span_the_quantiles(source):
    examples = source.for_feature(0)
    assert {e.quantile for e in examples.activating} == set(range(5))
    lowest = [e.activation for e in examples.activating if e.quantile == 0]
    highest = [e.activation for e in examples.activating if e.quantile == 4]
    assert max(lowest) < min(highest)
    patch = examples.activating[0]
    assert patch.kind is ExampleKind.IMAGE and (patch.image, patch.row, patch.column) == (1, 2, 3)


def test_a_text_feature_shows_its_token_marked_and_similar_looking_negatives(source):
    examples = source.for_feature(1)
    top = examples.explain[0]
    assert top.kind is ExampleKind.TEXT and "<<" in top.text and top.token in ("tube", "line")
    tokens = [e.token for e in examples.non_activating]
    similar = len(examples.non_activating) // 2
    assert all(e.kind is ExampleKind.TEXT for e in examples.non_activating)
    assert set(tokens[:similar]) <= {e.token for e in examples.explain + examples.activating}


def test_a_dense_feature_counts_below_its_median_peak_as_not_activating():
    activations = table()
    activations.peak[:, 2] = np.arange(1, STUDIES + 1)
    source = ExampleSource(activations)
    assert source.floor(2) == pytest.approx(np.median(np.arange(1, STUDIES + 1)))
    examples = source.for_feature(2)
    assert max(e.activation for e in examples.non_activating) <= source.floor(2)
    assert min(e.activation for e in examples.activating) > source.floor(2)
