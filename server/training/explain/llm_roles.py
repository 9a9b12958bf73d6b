"""The LLM explainer, detection judge and fuzzing scorer (``explainer`` / ``judge`` = llm).

Each sends its prompts (``llm_prompts``) through one shared ``ChatCaller``, which bounds,
retries and accounts them. The judge and the fuzzer ask in batches of ``batch_size``
examples, shuffled by a seed drawn from the run's seed and the feature, so that an answer
cannot lean on where activating examples sit in the list.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from maira_sae.sae.detection import balanced_accuracy, detection_auroc
from maira_sae.server.training.explain.llm_client import ChatCaller
from maira_sae.server.training.explain.llm_prompts import (
    detection_messages,
    explanation_messages,
    fuzzing_messages,
    read_answers,
    read_explanation,
)
from maira_sae.server.training.explain.protocols import (
    Example,
    ExampleKind,
    Explanation,
    FeatureExamples,
    FuzzingScore,
    Usage,
)

EXPLAINER_NAME = "llm"
JUDGE_NAME = "detection-llm"
EXPLANATION_TOKENS = 400  # room to think, then the EXPLANATION line
ANSWER_TOKENS_PER_EXAMPLE = 4  # "1, " per example, plus the brackets
_MARK = re.compile(r"<<(.+?)>>")
T = TypeVar("T")


class LlmExplainer:
    name = EXPLAINER_NAME

    def __init__(
        self, caller: ChatCaller, *, with_images: int = 0, max_tokens: int = EXPLANATION_TOKENS
    ) -> None:
        self.caller = caller
        self.with_images = with_images
        self.max_tokens = max_tokens

    async def explain(self, examples: FeatureExamples) -> Explanation:
        messages = explanation_messages(examples, with_images=self.with_images)
        text, usage = await self.caller.complete(
            messages, read_explanation, max_tokens=self.max_tokens
        )
        return Explanation(examples.feature, text, self.name, self.caller.settings.model, usage)


class _BatchedQuestions:
    """Asks the LLM about examples ``batch_size`` at a time; ``seed`` shuffles them."""

    def __init__(self, caller: ChatCaller, *, batch_size: int = 10, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.caller = caller
        self.batch_size = batch_size
        self.seed = seed


class LlmDetectionJudge(_BatchedQuestions):
    name = JUDGE_NAME

    async def judge(
        self, explanation: str, examples: Sequence[Example]
    ) -> tuple[list[float], Usage]:
        rng = random.Random(f"{self.seed}:{explanation}:{len(examples)}")
        return await _answers_in_batches(
            self.caller, detection_messages, explanation, examples, rng, self.batch_size
        )


class LlmFuzzingScorer(_BatchedQuestions):
    """Delphi's fuzzing: the held-out activating text examples, each shown once as marked and
    once with its mark moved to another word; None for a feature without text examples."""

    async def score(
        self, explanation: str, examples: FeatureExamples
    ) -> tuple[FuzzingScore | None, Usage]:
        rng = random.Random(f"{self.seed}:{examples.feature}")
        correct = [e.text for e in examples.activating if e.kind is ExampleKind.TEXT]
        fuzzed = [moved for text in correct if (moved := move_mark(text, rng)) is not None]
        if not correct or not fuzzed:
            return None, Usage()
        answers, usage = await _answers_in_batches(
            self.caller, fuzzing_messages, explanation, [*correct, *fuzzed], rng, self.batch_size
        )
        positive, negative = answers[: len(correct)], answers[len(correct) :]
        score = FuzzingScore(
            auroc=detection_auroc(positive, negative),
            balanced_accuracy=balanced_accuracy(positive, negative),
            n_correct=len(positive),
            n_fuzzed=len(negative),
        )
        return score, usage


def move_mark(text: str, rng: random.Random) -> str | None:
    """``text`` with its ``<<mark>>`` moved to another word (None when there is no other)."""
    match = _MARK.search(text)
    if match is None:
        return None
    marked = match.group(1)
    plain = text[: match.start()] + marked + text[match.end() :]
    end = match.start() + len(marked)
    words = [
        word
        for word in re.finditer(r"\S+", plain)
        if word.end() <= match.start() or word.start() >= end
    ]
    if not words:
        return None
    word = rng.choice(words)
    return f"{plain[: word.start()]}<<{word.group()}>>{plain[word.end() :]}"


async def _answers_in_batches(
    caller: ChatCaller,
    messages_of: Callable[[str, Sequence[T]], list[dict[str, Any]]],
    explanation: str,
    items: Sequence[T],
    rng: random.Random,
    batch_size: int,
) -> tuple[list[float], Usage]:
    """One 0/1 answer per item, asked in shuffled batches at once; in ``items``' order."""
    order = list(range(len(items)))
    rng.shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    replies = await asyncio.gather(
        *(
            caller.complete(
                messages_of(explanation, [items[i] for i in batch]),
                partial(read_answers, count=len(batch)),
                max_tokens=8 + ANSWER_TOKENS_PER_EXAMPLE * len(batch),
            )
            for batch in batches
        )
    )
    answers = [0.0] * len(items)
    usage = Usage()
    for batch, (values, cost) in zip(batches, replies, strict=True):
        usage += cost
        for index, value in zip(batch, values, strict=True):
            answers[index] = value
    return answers, usage
