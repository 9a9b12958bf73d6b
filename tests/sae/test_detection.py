from __future__ import annotations

import pytest

from maira_sae.sae.detection import balanced_accuracy, detection_auroc


def test_auroc_counts_ties_as_one_half():
    assert detection_auroc([1.0, 1.0], [0.0, 0.0]) == 1.0
    assert detection_auroc([0.0], [1.0]) == 0.0
    assert detection_auroc([0.5, 0.5], [0.5, 0.5]) == 0.5
    # pairs: (1 > 0) (1 > 0.5) (0.5 = 0.5 -> 1/2) (0.5 > 0): 3.5 of 4
    assert detection_auroc([1.0, 0.5], [0.0, 0.5]) == pytest.approx(3.5 / 4)


def test_balanced_accuracy_at_the_threshold():
    assert balanced_accuracy([1.0, 0.5, 0.0], [0.0, 0.6], threshold=0.5) == pytest.approx(
        (2 / 3 + 1 / 2) / 2
    )


def test_detection_needs_both_sets():
    with pytest.raises(ValueError, match="positive and negative"):
        detection_auroc([1.0], [])
