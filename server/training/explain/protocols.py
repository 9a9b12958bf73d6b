"""The values and roles the explain stages share: examples in, explanations and scores out.

Examples are built once per feature (``examples``); an ``Explainer`` writes one explanation
from the ``explain`` examples; a ``DetectionJudge`` says, for each held-out example, how
strongly an explanation applies to it; detection scoring turns those judgements into AUROC
and balanced accuracy over the held-out activating and non-activating examples. The run
(``runner``) drives these for a range of features, with bounded concurrency, retries and a
resumable progress file, and writes ``maira_sae.sae.interpretation_file``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class ExampleKind(StrEnum):
    TEXT = "text"  # a text token: its context, the token marked
    IMAGE = "image"  # an image patch: the study's report and where on the film


@dataclass(frozen=True)
class Example:
    """One token of one study where a feature fired (``activation`` > 0) or did not (0)."""

    study_id: str
    kind: ExampleKind
    activation: float
    # TEXT: the context with the token marked as <<token>>; IMAGE: the study's report.
    text: str
    token: str | None = None  # TEXT: the marked token itself
    image: int | None = None  # IMAGE: which image of the study (0 frontal, 1 lateral, ...)
    row: int | None = None  # IMAGE: patch grid row and column
    column: int | None = None
    quantile: int | None = None  # the activation quantile it was sampled from (None: top / none)
    heat_map_png: bytes | None = None  # the film with the feature's heat map, when built


@dataclass(frozen=True)
class FeatureExamples:
    """A feature's examples: shown to the explainer, and held out for scoring."""

    feature: int
    explain: tuple[Example, ...]  # top activations plus samples from activation quantiles
    activating: tuple[Example, ...]  # held out, from several quantiles
    non_activating: tuple[Example, ...]  # held out: random and similar-looking
    # Non-activating examples from the explain studies (not held out), for explainers that
    # contrast (the offline one); an LLM explainer may ignore them.
    contrast: tuple[Example, ...] = ()


@dataclass(frozen=True)
class Usage:
    """What calls to an LLM cost (all zero for the offline explainer and judge)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.requests + other.requests,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True)
class Explanation:
    feature: int
    text: str
    explainer: str  # e.g. "offline-contrastive", "llm"
    model: str | None  # the LLM, None offline
    usage: Usage = Usage()


@dataclass(frozen=True)
class DetectionScore:
    """How well an explanation tells held-out activating examples from non-activating ones."""

    auroc: float
    balanced_accuracy: float
    n_activating: int
    n_non_activating: int
    scorer: str  # e.g. "detection-phrase", "detection-llm"
    usage: Usage = Usage()


class UnparseableReply(Exception):
    """An LLM reply that could not be read; the run retries, then records it as failed."""

    def __init__(self, message: str, raw_text: str) -> None:
        super().__init__(message)
        self.raw_text = raw_text


class Explainer(Protocol):
    name: str

    async def explain(self, examples: FeatureExamples) -> Explanation: ...


class DetectionJudge(Protocol):
    """Per example, how strongly ``explanation`` applies to it, in [0, 1] (a probability or a
    0/1 answer); the detection scorer ranks and thresholds these."""

    name: str

    async def judge(
        self, explanation: str, examples: Sequence[Example]
    ) -> tuple[list[float], Usage]: ...


@dataclass(frozen=True)
class FuzzingScore:
    """How well an explanation tells activating tokens marked where the feature fired from the
    same examples with the mark moved to another word (the LLM path's second score)."""

    auroc: float
    balanced_accuracy: float
    n_correct: int
    n_fuzzed: int
    scorer: str = "fuzzing-llm"


class LlmCallFailed(Exception):
    """A request to an LLM that gave no readable reply within its attempts: the run records
    the feature as failed with ``reason`` and the last reply's ``raw_text``."""

    def __init__(self, reason: str, raw_text: str | None, usage: Usage) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw_text = raw_text
        self.usage = usage
