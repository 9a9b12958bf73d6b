"""Which phrases tell one set of texts from another: the weighted log-odds ratio with an
informative Dirichlet prior (Monroe, Colaresi and Quinn 2008, "Fightin' Words").

    distinctive_phrases(focus, contrast, *, prior_strength) -> list[PhraseScore]

Each text counts once per phrase it holds (document frequency), so a long report does not
outweigh a short one. The prior for a phrase is its share of both sets together, scaled to
``prior_strength`` pseudo-counts: rare phrases are shrunk towards "no difference", and the
z-score (the log-odds difference over its standard error) ranks phrases by how sure the
difference is, not only how large.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PhraseScore:
    key: str
    z: float  # > 0: more frequent in the focus texts
    focus_count: int  # focus texts holding it
    contrast_count: int


def distinctive_phrases(
    focus: Iterable[Mapping[str, str]],
    contrast: Iterable[Mapping[str, str]],
    *,
    prior_strength: float = 100.0,
) -> list[PhraseScore]:
    """Every phrase of either set, by z-score, highest first (ties by key)."""
    focus_counts = Counter(key for phrases in focus for key in phrases)
    contrast_counts = Counter(key for phrases in contrast for key in phrases)
    n_focus = sum(focus_counts.values())
    n_contrast = sum(contrast_counts.values())
    total = n_focus + n_contrast
    if total == 0:
        return []
    scores = []
    for key in focus_counts.keys() | contrast_counts.keys():
        y_focus, y_contrast = focus_counts[key], contrast_counts[key]
        alpha = prior_strength * (y_focus + y_contrast) / total
        delta = _log_odds(y_focus, n_focus, alpha, prior_strength) - _log_odds(
            y_contrast, n_contrast, alpha, prior_strength
        )
        variance = 1 / (y_focus + alpha) + 1 / (y_contrast + alpha)
        scores.append(PhraseScore(key, delta / math.sqrt(variance), y_focus, y_contrast))
    return sorted(scores, key=lambda score: (-score.z, score.key))


def _log_odds(count: int, size: int, alpha: float, alpha_total: float) -> float:
    return math.log((count + alpha) / (size + alpha_total - count - alpha))
