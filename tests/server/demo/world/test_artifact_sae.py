"""The shipped world artifact's SAE, measured on studies it never saw: do the labelled concept
features detect their concepts, and does steering the pacemaker feature write pacemakers?
(``python -m maira_sae.server.demo.world.measure`` prints the same measurements.)"""

from __future__ import annotations

import pytest

from maira_sae.server.demo.world.measure import held_out, load_world_demo, steering_curve
from maira_sae.server.demo.world.reports import (
    CARDIOMEGALY,
    LINE_OR_TUBE,
    PACEMAKER,
    PLEURAL_EFFUSION,
)
from maira_sae.server.demo.world.steering_eval import format_curve

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Each concept's top labelled feature (by its build-time AUROC), over held-out studies. Measured:
# pacemaker 0.974, line_or_tube 0.902, pleural_effusion 0.820; cardiomegaly has no feature
# labelled (none reaches the labelling AUROC of 0.8: the model barely writes it, F1 0.22).
MIN_HELD_OUT_AUROC = {PACEMAKER: 0.9, LINE_OR_TUBE: 0.85, PLEURAL_EFFUSION: 0.75}
# Best steered pacemaker rate minus the baseline rate; measured 0.9 (baseline 0.1, ADD and CLAMP
# at 1x and 1.5x the feature's peak: 0.9, 1.0, 0.7, 1.0).
MIN_STEERING_GAIN = 0.3


@pytest.fixture(scope="module")
def demo(world_demo):
    return load_world_demo(world_demo)  # already materialised: loaded as it is


@pytest.fixture(scope="module")
def data(demo):
    return held_out(demo)


def test_top_concept_features_detect_their_concepts_on_held_out_studies(demo, data):
    measured = data.aurocs({c: demo.top_labelled(c).feature for c in MIN_HELD_OUT_AUROC})
    print(measured)
    assert all(measured[c] >= MIN_HELD_OUT_AUROC[c] for c in MIN_HELD_OUT_AUROC), measured
    assert not demo.labelled(CARDIOMEGALY)


def test_steering_the_pacemaker_feature_raises_the_pacemaker_rate(demo, data):
    """The strongest pacemaker-labelled feature, added and clamped at 1x and 1.5x its largest
    held-out activation, at every position, on 10 held-out studies without a pacemaker."""
    curve = steering_curve(demo, data, PACEMAKER)
    print(format_curve(curve))
    best = max(point.concept_rate for point in curve.points)
    assert best >= curve.baseline_concept_rate + MIN_STEERING_GAIN, format_curve(curve)
