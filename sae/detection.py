"""Detection scores: how well per-example judgements tell positive examples from negative ones.

``detection_auroc`` is exact, ties counting one half (the Mann-Whitney U over n_pos * n_neg,
from the average ranks ``maira_sae.sae.interpretation`` uses for concept AUROCs);
``balanced_accuracy`` is the mean of the true-positive and true-negative rates when a
judgement at or above ``threshold`` says "positive".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maira_sae.sae.interpretation import average_ranks


def detection_auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(a random positive judgement > a random negative one) + P(equal) / 2."""
    _check(positive, negative)
    scores = torch.tensor([*positive, *negative], dtype=torch.float64)[:, None]
    ranks = average_ranks(scores)[:, 0]
    n_pos, n_neg = len(positive), len(negative)
    rank_sum = float(ranks[:n_pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def balanced_accuracy(
    positive: Sequence[float], negative: Sequence[float], threshold: float = 0.5
) -> float:
    _check(positive, negative)
    true_positive_rate = sum(value >= threshold for value in positive) / len(positive)
    true_negative_rate = sum(value < threshold for value in negative) / len(negative)
    return (true_positive_rate + true_negative_rate) / 2


def _check(positive: Sequence[float], negative: Sequence[float]) -> None:
    if not positive or not negative:
        raise ValueError(
            f"detection needs positive and negative examples, got {len(positive)} and "
            f"{len(negative)}"
        )
