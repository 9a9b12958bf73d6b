"""The LLM's prompts, Delphi-style, and the readers of its replies.

    explanation_messages(examples, *, with_images) -> messages
    read_explanation(reply) -> str
    detection_messages(explanation, examples) -> messages
    fuzzing_messages(explanation, examples) -> messages
    read_answers(reply, count) -> list[float]

The explainer sees a feature's examples (a text token in its context, marked ``<<so>>``; an
image patch as its study's report and where on which film), each with its activation on a
0-10 scale, and answers one line ``EXPLANATION: ...``. Detection shows a numbered batch of
held-out examples, activating and not, shuffled, and asks per example whether the feature
fires on it; fuzzing shows activating text examples whose marks are either where the feature
fired or moved to another word, and asks per example whether the marked words fit. Both
answer a JSON list of 0/1, one per example. A reply that does not hold what was asked raises
``UnparseableReply`` with the reply's text.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from typing import Any

from maira_sae.server.training.explain.protocols import (
    Example,
    ExampleKind,
    FeatureExamples,
    UnparseableReply,
)

_SETTING = (
    "You study one feature of a sparse autoencoder trained on the internal activations of a "
    "radiology vision-language model that reads chest X-ray studies (films plus the request's "
    "text) and writes their findings. A feature fires on single tokens: a word piece of the "
    "text, or a patch of a film. "
)

EXPLAINER_SYSTEM = (
    _SETTING + "You are shown the tokens where the feature fires most, and some where it fires "
    "weakly. A text token is shown in its context and marked <<like this>>; a film patch is "
    "shown as its study's text and where on the film it lies (and, when attached, the film "
    "with the feature's heat map). Each example has its activation from 0 to 10. Say, in a "
    "short phrase, what the examples have in common that the feature responds to: a finding, "
    "a device, a word, an anatomical place. Be specific; do not list the examples. Think if "
    "you need to, then end your reply with one line of the form\n"
    "EXPLANATION: <the phrase>"
)

DETECTION_SYSTEM = (
    _SETTING + "You are given an explanation of the feature and numbered examples. For each "
    "example, decide whether the feature fires on it, judging only by the explanation: 1 if it "
    "does, 0 if it does not. Answer with only a JSON list of 0 and 1, one per example, in "
    "order, such as [1, 0, 0, 1]."
)

FUZZING_SYSTEM = (
    _SETTING + "You are given an explanation of the feature and numbered text examples with "
    "words marked <<like this>>. In some examples the marks are where the feature fires; in "
    "others they were moved to other words. For each example, answer 1 if the marked words "
    "fit the explanation, 0 if they do not. Answer with only a JSON list of 0 and 1, one per "
    "example, in order, such as [1, 0, 0, 1]."
)

# "EXPLANATION: x", also in Markdown bold ("**EXPLANATION:** x"), any case
_EXPLANATION_LINE = re.compile(r"^\s*\**EXPLANATION\**\s*:\s*\**\s*(.+?)\s*$", re.I | re.M)
_LIST = re.compile(r"\[[^\[\]]*\]")
MAX_EXPLANATION_CHARS = 300


def explanation_messages(
    examples: FeatureExamples, *, with_images: int = 0
) -> list[dict[str, Any]]:
    """The explainer's prompt; ``with_images`` attaches up to that many heat-map films of the
    top image examples (those that carry one) as PNG parts, for a vision model."""
    top = max((example.activation for example in examples.explain), default=0.0) or 1.0
    lines = [
        f"Example {number} (activation {round(10 * example.activation / top)}):\n"
        + describe(example)
        for number, example in enumerate(examples.explain, start=1)
    ]
    text = "Examples where the feature fires:\n\n" + "\n\n".join(lines)
    films = [e for e in examples.explain if e.heat_map_png is not None][:with_images]
    if not films:
        return _messages(EXPLAINER_SYSTEM, text)
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for example in films:
        assert example.heat_map_png is not None
        parts.append({"type": "text", "text": f"Heat map of study {example.study_id}:"})
        url = "data:image/png;base64," + base64.b64encode(example.heat_map_png).decode("ascii")
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": parts}]


def read_explanation(reply: str) -> str:
    found = _EXPLANATION_LINE.findall(reply)
    if not found:
        raise UnparseableReply("no line 'EXPLANATION: ...' in the reply", reply)
    explanation = " ".join(found[-1].split()).strip(" \"'")
    if not explanation or len(explanation) > MAX_EXPLANATION_CHARS:
        raise UnparseableReply(
            f"the explanation is empty or longer than {MAX_EXPLANATION_CHARS} characters", reply
        )
    return explanation


def detection_messages(explanation: str, examples: Sequence[Example]) -> list[dict[str, Any]]:
    return _messages(DETECTION_SYSTEM, _numbered(explanation, [describe(e) for e in examples]))


def fuzzing_messages(explanation: str, texts: Sequence[str]) -> list[dict[str, Any]]:
    return _messages(FUZZING_SYSTEM, _numbered(explanation, texts))


def read_answers(reply: str, count: int) -> list[float]:
    """The 0/1 answers of a detection or fuzzing reply: the last JSON list of ``count``."""
    for candidate in reversed(_LIST.findall(reply)):
        try:
            answers = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(answers, list)
            and len(answers) == count
            and all(answer in (0, 1) and not isinstance(answer, bool) for answer in answers)
        ):
            return [float(answer) for answer in answers]
    raise UnparseableReply(f"no JSON list of {count} answers (0 or 1) in the reply", reply)


def describe(example: Example) -> str:
    """An example as the LLM reads it."""
    if example.kind is ExampleKind.TEXT:
        return example.text
    where = f"film {example.image}, patch row {example.row}, column {example.column}"
    return f"[a patch of the films: {where}] The study's text:\n{example.text}"


def _numbered(explanation: str, texts: Sequence[str]) -> str:
    body = "\n\n".join(f"Example {number}:\n{text}" for number, text in enumerate(texts, 1))
    return f"Explanation: {explanation}\n\n{body}"


def _messages(system: str, user: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
