"""Measure the shipped world demo on studies no build step saw: how well each concept's labelled
features detect it, and what steering a concept feature does to the reports.

    python -m maira_sae.server.demo.world.measure [--concept pacemaker] [--peaks 1,1.5]

prints the held-out AUROC of every concept's top labelled feature and the steering curve of the
concept's strongest labelled feature (strengths are multiples of its largest held-out
activation). ``tests/server/demo/world/test_artifact_sae.py`` holds these numbers to thresholds.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from maira_sae.sae import FeatureCatalogue, SteeringMode, load_sae
from maira_sae.sae.interpretation import (
    FeatureLabel,
    concept_aurocs,
    read_interpretations,
    study_scores,
)
from maira_sae.server.demo.layout import INTERPRETATIONS_FILE, MODEL_FOLDER, SAE_FOLDER
from maira_sae.server.demo.world.build import harvest_world
from maira_sae.server.demo.world.materialise import ensure_world_demo
from maira_sae.server.demo.world.model_spec import SAE_LAYER
from maira_sae.server.demo.world.reports import CONCEPTS, PACEMAKER
from maira_sae.server.demo.world.steering_eval import SteeringCurve, evaluate_steering, format_curve
from maira_sae.server.demo.world.studies import WorldStudy, world_dataset
from maira_sae.server.engine.engine import Engine, SaeEntry
from maira_sae.server.engine.types import PositionScope
from maira_sae.server.training.folder_training import load_model_and_processor
from maira_sae.server.training.harvest import HarvestedTokens

# The model trains on data seed 1000 (and is scored on 1001), the SAE on 2000.
HELD_OUT_SEED = 3000
HELD_OUT_STUDIES = 60


@dataclass(frozen=True)
class WorldDemo:
    engine: Engine  # the world model with its SAE, as the server serves them
    labels: tuple[FeatureLabel, ...]  # the interpretations: each labelled feature's concept

    def labelled(self, concept: str) -> list[FeatureLabel]:
        return [label for label in self.labels if label.concept == concept]

    def top_labelled(self, concept: str) -> FeatureLabel:
        """The feature labelled ``concept`` with the highest build-time AUROC."""
        return max(self.labelled(concept), key=lambda label: label.auroc)


@dataclass(frozen=True)
class HeldOut:
    studies: list[WorldStudy]
    tokens: HarvestedTokens  # harvested as the build harvests its SAE's training tokens
    codes: torch.Tensor  # [tokens, d_sae]

    def aurocs(self, features: dict[str, int]) -> dict[str, float]:
        """Study-level AUROC of each concept's given feature."""
        aurocs = concept_aurocs(
            study_scores(self.codes, self.tokens.study_index, len(self.studies)),
            {c: [c in study.concepts for study in self.studies] for c in CONCEPTS},
        )
        return {concept: float(aurocs.of(concept)[f]) for concept, f in features.items()}

    def peak(self, feature: int) -> float:
        return float(self.codes[:, feature].max())

    def without(self, concept: str, count: int) -> list[WorldStudy]:
        return [study for study in self.studies if concept not in study.concepts][:count]


def load_world_demo(folder: Path) -> WorldDemo:
    """The world demo materialised into ``folder`` (once), loaded on the CPU."""
    folder = ensure_world_demo(folder)
    model, processor = load_model_and_processor(
        str(folder / MODEL_FOLDER), device=torch.device("cpu")
    )
    catalogue = FeatureCatalogue.from_file(folder / INTERPRETATIONS_FILE)
    entry = SaeEntry("world", load_sae(folder / SAE_FOLDER), catalogue, SAE_LAYER)
    labels = tuple(read_interpretations(folder / INTERPRETATIONS_FILE))
    return WorldDemo(Engine(model, processor, [entry]), labels)


def held_out(demo: WorldDemo, count: int = HELD_OUT_STUDIES) -> HeldOut:
    studies = world_dataset(count, HELD_OUT_SEED)
    tokens = harvest_world(demo.engine.model, demo.engine.processor, studies)
    return HeldOut(studies, tokens, demo.engine.sae("").sae.encode(tokens.activations))


def strongest_labelled(demo: WorldDemo, data: HeldOut, concept: str) -> int:
    """The feature labelled ``concept`` with the largest held-out activation: the one the
    demo's TopFeatures (``labelled_only``) puts first on a study with the concept."""
    return max((label.feature for label in demo.labelled(concept)), key=data.peak)


def steering_curve(
    demo: WorldDemo,
    data: HeldOut,
    concept: str,
    *,
    peaks: Sequence[float] = (1.0, 1.5),
    studies: int = 10,
    scope: PositionScope = PositionScope.ALL,
    feature: int | None = None,
) -> SteeringCurve:
    """The steering curve of ``feature`` (default: the concept's strongest labelled one) on
    held-out studies without the concept, at multiples of its held-out peak."""
    chosen = strongest_labelled(demo, data, concept) if feature is None else feature
    return evaluate_steering(
        demo.engine,
        [study.to_study() for study in data.without(concept, studies)],
        feature=chosen,
        concept=concept,
        strengths=[multiple * data.peak(chosen) for multiple in peaks],
        modes=(SteeringMode.ADD, SteeringMode.CLAMP),
        scope=scope,
        max_new_tokens=48,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", choices=CONCEPTS, default=PACEMAKER)
    parser.add_argument("--feature", type=int, help="default: the strongest labelled feature")
    parser.add_argument("--peaks", default="1,1.5", help="strengths, in multiples of its peak")
    parser.add_argument("--studies", type=int, default=10, help="studies without the concept")
    parser.add_argument("--scope", choices=[s.value for s in PositionScope], default="all")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        demo = load_world_demo(Path(work) / "demo")
        data = held_out(demo)
        labelled = {c: demo.top_labelled(c).feature for c in CONCEPTS if demo.labelled(c)}
        for concept, auroc in data.aurocs(labelled).items():
            feature = labelled[concept]
            print(f"{concept}: top labelled feature {feature}, held-out AUROC {auroc:.3f}")
        for concept in sorted(set(CONCEPTS) - set(labelled)):
            print(f"{concept}: no feature labelled")
        curve = steering_curve(
            demo,
            data,
            args.concept,
            peaks=[float(x) for x in args.peaks.split(",")],
            studies=args.studies,
            scope=PositionScope(args.scope),
            feature=args.feature,
        )
        print(format_curve(curve))


if __name__ == "__main__":
    main()
