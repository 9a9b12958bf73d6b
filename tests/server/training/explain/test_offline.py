"""The offline explainer and judge on hand-made examples: contrastive, negation-aware."""

from __future__ import annotations

import asyncio

import pytest

from maira_sae.server.training.explain.offline import (
    NO_PHRASE,
    ContrastivePhraseExplainer,
    PhraseJudge,
)
from maira_sae.server.training.explain.phrases import marked_sentence, phrase_key, phrases_of
from maira_sae.server.training.explain.protocols import Example, ExampleKind, FeatureExamples
from maira_sae.server.training.explain.scoring import (
    derangement,
    score_detection,
    shuffled_control,
)

PACED = [
    "A left-sided pacemaker is in place with its lead in the right ventricle. No effusion.",
    "A cardiac pacemaker projects over the left chest. The lungs are clear.",
    "Left chest wall pacemaker with a single lead in the right ventricle.",
    "The left-sided pacemaker is unchanged. Small right pleural effusion.",
]
NOT_PACED = [
    "No pacemaker. Small left pleural effusion. The lungs are clear.",
    "The pacemaker has been removed since the prior study. The lungs are clear.",
    "No lines or tubes. No pacemaker. The heart size is normal.",
    "There is no pacemaker, but an endotracheal tube terminates above the carina.",
]


def image(text: str, activation: float) -> Example:
    return Example("s", ExampleKind.IMAGE, activation, text, image=0, row=1, column=2)


def feature_examples(feature: int = 7) -> FeatureExamples:
    return FeatureExamples(
        feature,
        explain=tuple(image(t, 2.0) for t in PACED * 3),  # enough texts to be sure
        activating=tuple(image(t, 1.0) for t in reversed(PACED)),
        non_activating=tuple(image(t, 0.0) for t in reversed(NOT_PACED)),
        contrast=tuple(image(t, 0.0) for t in NOT_PACED * 3),
    )


def test_negated_mentions_are_marked_and_never_plain():
    assert "pacemaker" not in phrases_of("No pacemaker.")
    assert "no pacemaker" in phrases_of("No pacemaker.")
    assert "no pacemaker" in phrases_of("The pacemaker has been removed since the prior study.")
    assert "prior study" in phrases_of("The pacemaker has been removed since the prior study.")
    found = phrases_of("There is no effusion, but a pacemaker is present.")
    assert "pacemaker" in found and "no effusion" in found and "effusion" not in found
    assert phrase_key("pleural effusions") == "pleural effusion"
    assert phrase_key("No pacemaker") == "no pacemaker"


def test_a_text_example_reads_as_the_sentence_of_its_token():
    text = "No pacemaker. The endotracheal <<tube>> terminates above the carina. No effusion."
    assert marked_sentence(text) == " The endotracheal <<tube>> terminates above the carina"


def test_the_explainer_names_what_sets_the_activating_texts_apart():
    text = ContrastivePhraseExplainer().describe(feature_examples())
    assert text.split("; ")[0] == "pacemaker"
    assert "(" not in text and "0." not in text  # a plain phrase, no scores inside


def test_the_explainer_says_so_when_nothing_stands_out():
    same = tuple(image(t, 1.0) for t in NOT_PACED)
    examples = FeatureExamples(1, same, same, same, tuple(image(t, 0.0) for t in NOT_PACED))
    assert ContrastivePhraseExplainer().describe(examples) == NO_PHRASE


def test_the_judge_reads_negation_as_the_explainer_does():
    judge = PhraseJudge()
    assert judge.match("pacemaker", image("No pacemaker.", 0)) == 0.0
    assert judge.match("pacemaker", image("A pacemaker.", 0)) == 1.0
    assert judge.match("no pacemaker", image("No pacemaker.", 0)) == 1.0
    partial = judge.match("pacemaker; lead", image("The pacemaker is unchanged.", 0))
    assert 0.5 < partial < 1.0


def test_detection_score_and_shuffled_control():
    judge = PhraseJudge()
    good = asyncio.run(score_detection(judge, "pacemaker", feature_examples()))
    assert good.auroc == 1.0 and good.balanced_accuracy == 1.0
    assert (good.n_activating, good.n_non_activating) == (4, 4)
    assert good.scorer == "detection-phrase"
    wrong = asyncio.run(score_detection(judge, "no pacemaker", feature_examples()))
    assert wrong.auroc < 0.5
    explanations = {1: "pacemaker", 2: "no pacemaker"}
    examples = {1: feature_examples(1), 2: feature_examples(2)}
    control = asyncio.run(shuffled_control(judge, explanations, examples, seed=3))
    assert control.explanation_of == {1: 2, 2: 1}
    assert control.scores[1].auroc == wrong.auroc


def test_scoring_needs_both_held_out_sets():
    empty = FeatureExamples(1, (), (), ())
    with pytest.raises(ValueError, match="held-out activating and non-activating"):
        asyncio.run(score_detection(PhraseJudge(), "x", empty))


@pytest.mark.parametrize("size", [2, 3, 10, 51])
def test_derangement_moves_every_feature(size):
    pairs = derangement(list(range(size)), seed=size)
    assert sorted(pairs) == sorted(pairs.values()) == list(range(size))
    assert all(source != feature for feature, source in pairs.items())
