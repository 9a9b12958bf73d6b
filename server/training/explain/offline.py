"""The offline explainer and its detection judge: no LLM, so the demo and the tests run them.

    ContrastivePhraseExplainer(settings=OfflineSettings()).explain(examples) -> Explanation
    PhraseJudge().judge(explanation, examples) -> (judgements in [0, 1], Usage())

The explainer mines the phrases (``phrases``: 1-3 word n-grams, negated mentions marked) that
set a feature's activating explain examples apart from its contrast examples (non-activating,
from the same explain studies) by the weighted log-odds ratio (``contrastive``), and writes the
strongest few that overlap no stronger one, as written, joined by "; " ("pacemaker; right
ventricle"). It reads only the examples' texts (reports and token contexts).

A text token is read as the sentence that holds it (its context window spans neighbouring
sentences, which say other things); an image patch as its study's text.

The judge reads an explanation back as its "; "-separated phrases, the first weighing most,
and gives each example 0 when none of them is in its text, else 0.5 plus half the matched
weight: "applies" (>= 0.5) when any phrase matches, more strongly the more match. Negation is
read as the explainer reads it, so "No pacemaker." does not match "pacemaker".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from maira_sae.server.training.explain.contrastive import distinctive_phrases
from maira_sae.server.training.explain.phrases import (
    MAX_WORDS,
    NEGATED,
    STOP_WORDS,
    marked_sentence,
    phrase_key,
    phrases_of,
)
from maira_sae.server.training.explain.protocols import (
    Example,
    ExampleKind,
    Explanation,
    FeatureExamples,
    Usage,
)

EXPLAINER_NAME = "offline-contrastive"
JUDGE_NAME = "detection-phrase"
NO_PHRASE = "no distinctive phrase"  # what the explainer writes when nothing stands out


@dataclass(frozen=True)
class OfflineSettings:
    max_phrases: int = 4
    min_z: float = 1.96  # a phrase must be this sure (two-sided 5%)...
    min_support: float = 0.2  # ...and held by this share of the activating examples
    prior_strength: float = 100.0  # pseudo-counts of the informative prior


class ContrastivePhraseExplainer:
    name = EXPLAINER_NAME

    def __init__(self, settings: OfflineSettings = OfflineSettings()) -> None:
        self.settings = settings

    async def explain(self, examples: FeatureExamples) -> Explanation:
        return Explanation(examples.feature, self.describe(examples), self.name, None)

    def describe(self, examples: FeatureExamples) -> str:
        """The explanation text (synchronous: the work is all CPU)."""
        focus = [_phrases(e) for e in examples.explain]
        contrast = [_phrases(e) for e in examples.contrast]
        if not focus:
            return NO_PHRASE
        settings = self.settings
        chosen: list[str] = []
        for score in distinctive_phrases(focus, contrast, prior_strength=settings.prior_strength):
            if len(chosen) == settings.max_phrases or score.z < settings.min_z:
                break
            if score.focus_count < settings.min_support * len(focus):
                continue
            if not any(_overlap(score.key, other) for other in chosen):
                chosen.append(score.key)
        if not chosen:
            return NO_PHRASE
        return "; ".join(_surface(key, focus) for key in chosen)


class PhraseJudge:
    name = JUDGE_NAME

    async def judge(
        self, explanation: str, examples: Sequence[Example]
    ) -> tuple[list[float], Usage]:
        return [self.match(explanation, example) for example in examples], Usage()

    @staticmethod
    def match(explanation: str, example: Example) -> float:
        keys = [key for key in (phrase_key(p) for p in explanation.split(";")) if key]
        if not keys:
            return 0.0
        present = _phrases(example)
        weights = [1 / (1 + rank) for rank in range(len(keys))]
        matched = sum(
            weight * _match(key, present) for key, weight in zip(keys, weights, strict=True)
        )
        return 0.0 if matched == 0 else 0.5 + 0.5 * matched / sum(weights)


def _phrases(example: Example) -> dict[str, str]:
    """What the explainer and the judge read of an example: a text token's sentence, or an
    image patch's study text."""
    text = example.text
    return phrases_of(marked_sentence(text) if example.kind is ExampleKind.TEXT else text)


def _match(key: str, present: dict[str, str]) -> float:
    """1 when the phrase is in the text; a phrase longer than the mined n-grams (an LLM's
    sentence) matches by the share of its content words the text holds."""
    if key in present:
        return 1.0
    negated = key.startswith(NEGATED)
    words = key.removeprefix(NEGATED).split()
    if len(words) <= MAX_WORDS:
        return 0.0
    content = [word for word in words if word not in STOP_WORDS]
    prefix = NEGATED if negated else ""
    return sum(prefix + word in present for word in content) / max(len(content), 1)


def _overlap(key: str, other: str) -> bool:
    words = set(key.removeprefix(NEGATED).split())
    return bool(words & set(other.removeprefix(NEGATED).split()))


def _surface(key: str, focus: Sequence[dict[str, str]]) -> str:
    """The phrase as the activating examples most often wrote it."""
    forms = Counter(phrases[key] for phrases in focus if key in phrases)
    return forms.most_common(1)[0][0]
