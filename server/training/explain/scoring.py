"""Detection scoring of explanations, and its shuffled control.

    async def score_detection(judge, explanation, examples, *, threshold=0.5) -> DetectionScore
    async def shuffled_control(judge, explanations, examples, *, seed=0) -> ShuffledControl
    def derangement(features, seed) -> dict[int, int]

``score_detection`` asks the judge about every held-out example of one feature (activating and
non-activating) and scores the judgements by AUROC and balanced accuracy
(``maira_sae.sae.detection``). The control scores the same explanations on another feature's
held-out examples (a seeded derangement: no explanation meets its own feature's examples), so
"the scores discriminate" reads as the gap between the two means.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from maira_sae.sae.detection import balanced_accuracy, detection_auroc
from maira_sae.server.training.explain.protocols import (
    DetectionJudge,
    DetectionScore,
    FeatureExamples,
)


async def score_detection(
    judge: DetectionJudge,
    explanation: str,
    examples: FeatureExamples,
    *,
    threshold: float = 0.5,
) -> DetectionScore:
    """The detection score of ``explanation`` over ``examples``' held-out examples;
    ``ValueError`` when either held-out set is empty."""
    if not examples.activating or not examples.non_activating:
        raise ValueError(
            f"feature {examples.feature}: detection needs held-out activating and "
            f"non-activating examples, got {len(examples.activating)} and "
            f"{len(examples.non_activating)}"
        )
    held_out = [*examples.activating, *examples.non_activating]
    judgements, usage = await judge.judge(explanation, held_out)
    if len(judgements) != len(held_out):
        raise ValueError(f"the judge answered {len(judgements)} of {len(held_out)} examples")
    positive = judgements[: len(examples.activating)]
    negative = judgements[len(examples.activating) :]
    return DetectionScore(
        auroc=detection_auroc(positive, negative),
        balanced_accuracy=balanced_accuracy(positive, negative, threshold),
        n_activating=len(positive),
        n_non_activating=len(negative),
        scorer=judge.name,
        usage=usage,
    )


@dataclass(frozen=True)
class ShuffledControl:
    """Each feature's examples scored with another feature's explanation."""

    explanation_of: dict[int, int]  # examples' feature -> the feature whose explanation
    scores: dict[int, DetectionScore]  # by the examples' feature

    @property
    def mean_auroc(self) -> float:
        return sum(score.auroc for score in self.scores.values()) / max(len(self.scores), 1)


async def shuffled_control(
    judge: DetectionJudge,
    explanations: Mapping[int, str],
    examples: Mapping[int, FeatureExamples],
    *,
    seed: int = 0,
    threshold: float = 0.5,
) -> ShuffledControl:
    """The explanations of the features in both mappings, each scored on another feature's
    held-out examples (a derangement drawn from ``seed``); needs two features or more."""
    features = sorted(set(explanations) & set(examples))
    pairs = derangement(features, seed)
    scores = {
        feature: await score_detection(
            judge, explanations[source], examples[feature], threshold=threshold
        )
        for feature, source in pairs.items()
    }
    return ShuffledControl(pairs, scores)


def derangement(features: Sequence[int], seed: int) -> dict[int, int]:
    """A seeded permutation of ``features`` with no fixed point: feature -> another feature."""
    if len(features) < 2:
        raise ValueError(f"a shuffled control needs two features or more, got {len(features)}")
    order = list(features)
    random.Random(seed).shuffle(order)
    # A random cyclic shift of a random order: every feature moves, and every derangement
    # that is a single cycle is equally likely.
    return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
