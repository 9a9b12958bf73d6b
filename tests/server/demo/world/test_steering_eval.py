"""The steering evaluation's bookkeeping, on the random demo model (whose words mean nothing)."""

from __future__ import annotations

import pytest
import torch

from maira_sae.sae import FeatureCatalogue, SteeringMode, load_sae
from maira_sae.server.demo.random_checkpoint import SAE_LAYER
from maira_sae.server.demo.world.steering_eval import evaluate_steering, format_curve
from maira_sae.server.engine.engine import Engine, SaeEntry
from maira_sae.server.maira2.study import Study
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image
from maira_sae.server.training.folder_training import load_model_and_processor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine(demo_checkpoint) -> Engine:
    model, processor = load_model_and_processor(
        str(demo_checkpoint.model_dir), device=torch.device("cpu")
    )
    sae = load_sae(demo_checkpoint.sae_dir)
    return Engine(model, processor, [SaeEntry("demo", sae, FeatureCatalogue.empty(), SAE_LAYER)])


def test_curve_compares_each_steered_report_with_its_baseline(engine):
    def parse(report: str) -> set[str]:
        """A stand-in judge: "pacemaker" for any report that is not the first one seen."""
        seen.setdefault("first", report)
        return {"pacemaker"} if report != seen["first"] else set()

    seen: dict[str, str] = {}
    curve = evaluate_steering(
        engine,
        [Study(frontal=synthetic_chest_image())],
        feature=3,
        concept="pacemaker",
        strengths=[0.0, 200.0],
        modes=(SteeringMode.ADD,),
        max_new_tokens=6,
        parse=parse,
    )
    assert curve.baseline_concept_rate == 0.0 and curve.num_studies == 1
    unchanged, pushed = curve.points
    assert (unchanged.mode, unchanged.strength) == ("add", 0.0)
    assert (unchanged.concept_rate, unchanged.text_changed_rate) == (0.0, 0.0)
    assert (pushed.concept_rate, pushed.text_changed_rate) == (1.0, 1.0)
    assert pushed.others_changed_rate == 0.0
    table = format_curve(curve)
    assert "baseline concept rate 0.00" in table and table.count("\n") == 3
    assert curve.to_dict()["points"][1]["strength"] == 200.0


def test_unknown_concepts_and_empty_study_lists_are_refused(engine):
    with pytest.raises(ValueError, match="unknown concept 'fracture'"):
        evaluate_steering(engine, [], feature=0, concept="fracture", strengths=[1.0])
    with pytest.raises(ValueError, match="no studies"):
        evaluate_steering(engine, [], feature=0, concept="pacemaker", strengths=[1.0])
