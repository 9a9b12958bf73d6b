"""Interpret SAE features against known concepts: each feature as a detector of each concept.

A feature's score on an item (a token, or a study: e.g. its maximum over the study's tokens)
ranks the items; its AUROC for a concept is the probability that a random item with the
concept outranks a random item without it, ties counting one half (the Mann-Whitney U
statistic over n_pos * n_neg). It is computed exactly from average ranks, so the many exact
zeros of a sparse code are handled as ties, not as an arbitrary order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maira_sae.sae.interpretation_file import (
    InterpretationRecord,
    read_interpretation_file,
    write_interpretation_file,
)

CONCEPT_EXPLAINER = "concept-annotations"
CONCEPT_SCORER = "concept-auroc"


@dataclass(frozen=True)
class ConceptAurocs:
    """AUROC of every feature (columns) for every concept (rows): ``values`` [C, F]."""

    concepts: tuple[str, ...]
    values: torch.Tensor  # float64 [len(concepts), d_sae]

    def of(self, concept: str) -> torch.Tensor:
        return self.values[self.concepts.index(concept)]


@dataclass(frozen=True)
class FeatureLabel:
    feature: int
    concept: str
    auroc: float


def concept_aurocs(
    feature_scores: torch.Tensor, labels: Mapping[str, Sequence[bool] | np.ndarray | torch.Tensor]
) -> ConceptAurocs:
    """AUROC of each feature's score [n_items, d_sae] for each concept's labels [n_items].

    A concept must have both positive and negative items (otherwise AUROC is undefined):
    ``ValueError`` names it.
    """
    if feature_scores.ndim != 2:
        raise ValueError(f"feature_scores must be [n_items, d_sae], got {feature_scores.shape}")
    ranks = average_ranks(feature_scores.detach().cpu().double())
    rows = []
    for concept, concept_labels in labels.items():
        positive = torch.as_tensor(np.asarray(concept_labels, dtype=bool))
        if positive.shape != (feature_scores.shape[0],):
            raise ValueError(
                f"labels for {concept!r} have shape {tuple(positive.shape)}, "
                f"expected ({feature_scores.shape[0]},)"
            )
        n_pos = int(positive.sum())
        n_neg = positive.numel() - n_pos
        if n_pos == 0 or n_neg == 0:
            raise ValueError(f"concept {concept!r} needs positive and negative items")
        rank_sum = ranks[positive].sum(dim=0)
        rows.append((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    values = torch.stack(rows) if rows else torch.zeros(0, feature_scores.shape[1])
    return ConceptAurocs(tuple(labels), values.double())


def average_ranks(scores: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each column's values, tied values sharing their average rank."""
    columns = scores.T.contiguous()
    ordered = columns.sort(dim=1).values
    below = torch.searchsorted(ordered, columns, right=False)
    up_to = torch.searchsorted(ordered, columns, right=True)
    return ((below + up_to + 1).double() / 2).T


def study_scores(
    codes: torch.Tensor, study_index: torch.Tensor, num_studies: int, *, reduce: str = "amax"
) -> torch.Tensor:
    """Per-study feature scores [num_studies, d_sae] from token codes [N, d_sae]: the
    ``reduce`` ("amax", "sum" or "mean") over each study's tokens; 0 for a study without tokens.
    """
    out = codes.new_zeros(num_studies, codes.shape[1])
    index = study_index.to(codes.device)[:, None].expand_as(codes)
    return out.scatter_reduce(0, index, codes, reduce=reduce, include_self=False)


def label_features(aurocs: ConceptAurocs, *, min_auroc: float = 0.5) -> list[FeatureLabel]:
    """Each feature's best concept, for the features whose best AUROC is above ``min_auroc``
    (0.5 is chance: a feature that never fires scores exactly 0.5 for every concept). Ties
    between concepts go to the one listed first."""
    if not aurocs.concepts:
        return []
    best, which = aurocs.values.max(dim=0)
    return [
        FeatureLabel(feature, aurocs.concepts[int(which[feature])], float(best[feature]))
        for feature in range(best.shape[0])
        if float(best[feature]) > min_auroc
    ]


def explanation(concept: str) -> str:
    """A concept in words, as an explanation reads it: "line_or_tube" -> "line or tube"."""
    return concept.replace("_", " ")


def concept_of(explanation_text: str) -> str:
    """The concept an ``explanation`` names: "line or tube" -> "line_or_tube"."""
    return explanation_text.replace(" ", "_")


def write_interpretations(
    path: str | os.PathLike[str], labels: Sequence[FeatureLabel], *, created: str | None = None
) -> Path:
    """The labels as an interpretation file (``interpretation_file``), which the server loads:
    explanation = the concept in words, score = concept_auroc = its AUROC, explainer
    "concept-annotations", scorer "concept-auroc"; ``created`` is the ISO date of the labels."""
    return write_interpretation_file(
        path,
        (
            InterpretationRecord(
                feature=label.feature,
                explanation=explanation(label.concept),
                score=label.auroc,
                explainer=CONCEPT_EXPLAINER,
                scorer=CONCEPT_SCORER,
                concept_auroc=label.auroc,
                created=created,
            )
            for label in labels
        ),
    )


def read_interpretations(path: str | os.PathLike[str]) -> list[FeatureLabel]:
    """The labels in a file ``write_interpretations`` wrote (the concept and its AUROC back),
    by feature; ``ValueError`` for a row without a concept AUROC."""
    labels = []
    for record in read_interpretation_file(path):
        if record.concept_auroc is None:
            raise ValueError(f"{path}: feature {record.feature} has no concept_auroc")
        labels.append(
            FeatureLabel(record.feature, concept_of(record.explanation), record.concept_auroc)
        )
    return labels
