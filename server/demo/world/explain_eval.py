"""The offline explainer measured on the world: does it name the concept of the features the
world labelled, and do its explanations detect their features better than shuffled ones?

    python -m maira_sae.server.demo.world.explain_eval [--studies 200]

prints JSON: how many of the labelled features' explanations name their concept (by the world's
own report parser, ``reports.concepts_in_text``) and which do not; the mean detection AUROC of
the explanations over the live features beside the shuffled control's; the scores of the
world's three best features (the labelled ones with the highest concept AUROC). The explainer
reads only the studies' texts and the SAE's activations, never the concept annotations; those
are read here, afterwards, to judge it. ``tests/server/demo/world/test_explain_world.py``
holds these figures to the issue's targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maira_sae.server.demo.world.dashboard import study_id
from maira_sae.server.demo.world.measure import HELD_OUT_SEED, WorldDemo, load_world_demo
from maira_sae.server.demo.world.model_spec import SAE_LAYER
from maira_sae.server.demo.world.reports import concepts_in_text
from maira_sae.server.demo.world.studies import world_dataset
from maira_sae.server.training.dashboards import DashboardStudy
from maira_sae.server.training.explain.examples import (
    ExampleSettings,
    ExampleSource,
    collect_activations,
)
from maira_sae.server.training.explain.offline import ContrastivePhraseExplainer, PhraseJudge
from maira_sae.server.training.explain.protocols import DetectionScore, FeatureExamples
from maira_sae.server.training.explain.scoring import score_detection, shuffled_control

EVAL_STUDIES = 200  # held-out studies (the dashboard's 100 are the first of them)
CONTROL_SEED = 0


@dataclass(frozen=True)
class ExplainedFeature:
    feature: int
    explanation: str
    score: DetectionScore


@dataclass(frozen=True)
class WorldExplanations:
    """Every scoreable live feature explained and scored, and the shuffled control."""

    live_features: int
    explained: dict[int, ExplainedFeature]
    control: dict[int, DetectionScore]
    examples: dict[int, FeatureExamples] = field(repr=False)

    @property
    def mean_auroc(self) -> float:
        return _mean(e.score.auroc for e in self.explained.values())

    @property
    def control_mean_auroc(self) -> float:
        return _mean(score.auroc for score in self.control.values())


def demo_studies(count: int = EVAL_STUDIES) -> list[DashboardStudy]:
    """The world's held-out studies (the seed measure.py holds out), with their findings."""
    return [
        DashboardStudy(study_id(i), study.to_study(), study.findings)
        for i, study in enumerate(world_dataset(count, HELD_OUT_SEED))
    ]


def explain_world(
    demo: WorldDemo,
    studies: Sequence[DashboardStudy],
    settings: ExampleSettings | None = None,
    *,
    features: Sequence[int] | None = None,
) -> WorldExplanations:
    """Explain ``features`` (default: every live one) with the offline explainer, score each
    by detection with the phrase judge, and score the shuffled control; a feature with no
    held-out activating or non-activating example is left out (counted in ``live_features``)."""
    engine = demo.engine
    activations = collect_activations(
        engine.model, engine.processor, engine.sae("").sae, SAE_LAYER, studies, batch_size=8
    )
    source = ExampleSource(activations, settings or ExampleSettings())
    live = source.features()
    wanted = live if features is None else [f for f in features if f in set(live)]
    return asyncio.run(_explain_and_score(source, wanted, len(live)))


async def _explain_and_score(
    source: ExampleSource, features: Sequence[int], live: int
) -> WorldExplanations:
    explainer, judge = ContrastivePhraseExplainer(), PhraseJudge()
    examples = {f: source.for_feature(f) for f in features}
    examples = {f: e for f, e in examples.items() if e.activating and e.non_activating}
    explained = {}
    for feature, feature_examples in examples.items():
        text = (await explainer.explain(feature_examples)).text
        score = await score_detection(judge, text, feature_examples)
        explained[feature] = ExplainedFeature(feature, text, score)
    control = await shuffled_control(
        judge, {f: e.explanation for f, e in explained.items()}, examples, seed=CONTROL_SEED
    )
    return WorldExplanations(live, explained, control.scores, examples)


def world_report(demo: WorldDemo, result: WorldExplanations) -> dict[str, Any]:
    """The figures of the issue's targets, as JSON-ready values."""
    labelled = sorted(demo.labels, key=lambda label: -label.auroc)
    named, misses, also_other = 0, [], 0
    for label in labelled:
        explained = result.explained.get(label.feature)
        said = concepts_in_text(explained.explanation) if explained else set()
        if label.concept in said:
            named += 1
            also_other += bool(said - {label.concept})
        else:
            misses.append(
                {
                    "feature": label.feature,
                    "concept": label.concept,
                    "explanation": explained.explanation if explained else None,
                }
            )
    return {
        "labelled_features": len(labelled),
        "named_concept": named,
        "named_another_concept_too": also_other,
        "misses": misses,
        "live_features": result.live_features,
        "scored_features": len(result.explained),
        "mean_detection_auroc": round(result.mean_auroc, 4),
        "shuffled_control_mean_auroc": round(result.control_mean_auroc, 4),
        "best_features": [
            _feature_entry(label.feature, label.concept, result) for label in labelled[:3]
        ],
    }


def _feature_entry(feature: int, concept: str, result: WorldExplanations) -> dict[str, Any]:
    explained = result.explained.get(feature)
    if explained is None:
        return {"feature": feature, "concept": concept, "explanation": None}
    score = explained.score
    return {
        "feature": feature,
        "concept": concept,
        "explanation": explained.explanation,
        "auroc": round(score.auroc, 4),
        "balanced_accuracy": round(score.balanced_accuracy, 4),
        "n_activating": score.n_activating,
        "n_non_activating": score.n_non_activating,
        "control_auroc": round(result.control[feature].auroc, 4),
    }


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=EVAL_STUDIES)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        demo = load_world_demo(Path(work) / "demo")
        result = explain_world(demo, demo_studies(args.studies))
        print(json.dumps({"studies": args.studies, **world_report(demo, result)}, indent=2))


if __name__ == "__main__":
    main()
