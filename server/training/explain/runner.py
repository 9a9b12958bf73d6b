"""Explain and score a range of features, resumably, many at once.

    summary = await explain_features(features, examples_of, explainer, judge, progress,
                                     fuzzer=None, settings=RunSettings())

For each feature not yet in the progress file: its examples (``examples_of``), one
explanation, its detection score over the held-out examples and, with an LLM fuzzing scorer,
its fuzzing score; then one line in the progress file (``progress``), "explained" with its
interpretation record or "failed" with the reason and, for a reply that could not be read,
the reply's text. Nothing a feature does stops the run. ``settings.features_in_flight``
features run at once (the LLM caller bounds the requests in flight on its own; with as many
features as requests every request slot stays busy).

After the range, the shuffled control: the explanations of (a seeded sample of) the explained
features, each scored on another feature's held-out examples by the same judge
(``scoring.derangement``); its mean AUROC is reported beside the explanations' own mean, so
"the scores discriminate" reads as the gap between the two.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from tqdm import tqdm

from maira_sae.sae.interpretation_file import InterpretationRecord
from maira_sae.server.training.explain.progress import FeatureOutcome, ProgressFile, Status
from maira_sae.server.training.explain.protocols import (
    DetectionJudge,
    Explainer,
    FeatureExamples,
    FuzzingScore,
    LlmCallFailed,
    UnparseableReply,
    Usage,
)
from maira_sae.server.training.explain.scoring import derangement, score_detection

log = logging.getLogger(__name__)
NOTHING_SPENT = Usage()


class FuzzingScorer(Protocol):
    async def score(
        self, explanation: str, examples: FeatureExamples
    ) -> tuple[FuzzingScore | None, Usage]: ...


@dataclass(frozen=True)
class RunSettings:
    features_in_flight: int = 32
    seed: int = 0  # of the control's sample and derangement
    control_features: int = 256  # explained features the control scores (0: no control)
    retry_failed: bool = False  # a rerun also retries the features that failed before
    progress_bar: bool = True


@dataclass
class RunSummary:
    features: int  # in the range
    explained: int
    failed: int
    resumed: int  # finished by an earlier run, skipped by this one
    usage: Usage  # every outcome's in the range, and the control's
    mean_score: float | None  # mean detection AUROC of the explained features
    control_score: float | None  # mean AUROC of the same explanations, shuffled
    control_features: int
    mean_fuzzing: float | None
    failure_reasons: dict[str, int] = field(default_factory=dict)  # first words -> count

    def to_dict(self) -> dict[str, Any]:
        usage = self.usage
        return {
            "features": self.features,
            "explained": self.explained,
            "failed": self.failed,
            "resumed": self.resumed,
            "usage": {
                "requests": usage.requests,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
            },
            "mean_score": _rounded(self.mean_score),
            "control_score": _rounded(self.control_score),
            "control_features": self.control_features,
            "mean_fuzzing": _rounded(self.mean_fuzzing),
            "failure_reasons": self.failure_reasons,
        }


async def explain_features(
    features: Sequence[int],
    examples_of: Callable[[int], FeatureExamples],
    explainer: Explainer,
    judge: DetectionJudge,
    progress: ProgressFile,
    *,
    fuzzer: FuzzingScorer | None = None,
    settings: RunSettings = RunSettings(),
) -> RunSummary:
    """Run ``features`` to the end (see the module docstring) and summarise the range."""
    if settings.features_in_flight < 1:
        raise ValueError(f"features in flight must be >= 1, got {settings.features_in_flight}")
    done = progress.finished()
    wanted = list(dict.fromkeys(features))
    todo = [f for f in wanted if not _finished(done.get(f), settings.retry_failed)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for feature in todo:
        queue.put_nowait(feature)
    bar = tqdm(total=len(todo), desc="explain", unit="feature", disable=not settings.progress_bar)

    async def worker() -> None:
        while not queue.empty():
            feature = queue.get_nowait()
            outcome = await explain_one(feature, examples_of, explainer, judge, fuzzer)
            progress.append(outcome)
            bar.update()

    try:
        workers = min(settings.features_in_flight, len(todo))
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        bar.close()
    finished = progress.finished()
    outcomes = [finished[f] for f in wanted if f in finished]
    control, control_usage = await _control(outcomes, examples_of, judge, settings)
    return _summary(wanted, outcomes, len(wanted) - len(todo), control, control_usage)


async def explain_one(
    feature: int,
    examples_of: Callable[[int], FeatureExamples],
    explainer: Explainer,
    judge: DetectionJudge,
    fuzzer: FuzzingScorer | None = None,
) -> FeatureOutcome:
    """One feature's outcome: explained, or failed with the reason (never an exception)."""
    spent = Usage()
    try:
        examples = examples_of(feature)
        if not examples.explain or not examples.activating or not examples.non_activating:
            return _failed(
                feature,
                f"too few examples: {len(examples.explain)} to explain from, "
                f"{len(examples.activating)} held-out activating and "
                f"{len(examples.non_activating)} non-activating",
            )
        explanation = await explainer.explain(examples)
        spent += explanation.usage
        score = await score_detection(judge, explanation.text, examples)
        spent += score.usage
        fuzzing = None
        if fuzzer is not None:
            fuzzing, cost = await fuzzer.score(explanation.text, examples)
            spent += cost
    except LlmCallFailed as error:
        return _failed(feature, error.reason, error.raw_text, spent + error.usage)
    except UnparseableReply as error:
        return _failed(feature, f"unparseable reply: {error}", error.raw_text, spent)
    except Exception as error:  # a feature's fault, whatever it is, must not stop the run
        log.exception("feature %d failed", feature)
        return _failed(feature, f"{type(error).__name__}: {error}", None, spent)
    record = InterpretationRecord(
        feature=feature,
        explanation=explanation.text,
        score=score.auroc,
        explainer=explanation.explainer,
        explainer_model=explanation.model,
        scorer=score.scorer,
        n_activating=score.n_activating,
        n_non_activating=score.n_non_activating,
        auroc=score.auroc,
        balanced_accuracy=score.balanced_accuracy,
        created=datetime.now(UTC).date().isoformat(),
    )
    return FeatureOutcome(feature, Status.EXPLAINED, record, fuzzing=fuzzing, usage=spent)


def _failed(
    feature: int, reason: str, raw_text: str | None = None, usage: Usage = NOTHING_SPENT
) -> FeatureOutcome:
    return FeatureOutcome(feature, Status.FAILED, reason=reason, raw_text=raw_text, usage=usage)


def _finished(outcome: FeatureOutcome | None, retry_failed: bool) -> bool:
    if outcome is None:
        return False
    return outcome.status is Status.EXPLAINED or not retry_failed


async def _control(
    outcomes: Sequence[FeatureOutcome],
    examples_of: Callable[[int], FeatureExamples],
    judge: DetectionJudge,
    settings: RunSettings,
) -> tuple[list[float], Usage]:
    """The control's AUROCs over a seeded sample of the explained features, and their cost."""
    explained = {o.feature: o.record.explanation for o in outcomes if o.record is not None}
    sample = sorted(explained)
    if settings.control_features < len(sample):
        sample = sorted(random.Random(settings.seed).sample(sample, settings.control_features))
    if len(sample) < 2:
        return [], Usage()
    pairs = derangement(sample, settings.seed)
    limit = asyncio.Semaphore(settings.features_in_flight)

    async def one(feature: int, source: int) -> tuple[float | None, Usage]:
        async with limit:
            try:
                score = await score_detection(judge, explained[source], examples_of(feature))
            except LlmCallFailed as error:
                return None, error.usage
            return score.auroc, score.usage

    results = await asyncio.gather(*(one(f, s) for f, s in pairs.items()))
    usage = sum((cost for _, cost in results), Usage())
    return [auroc for auroc, _ in results if auroc is not None], usage


def _summary(
    wanted: Sequence[int],
    outcomes: Sequence[FeatureOutcome],
    resumed: int,
    control: Sequence[float],
    control_usage: Usage,
) -> RunSummary:
    explained = [o for o in outcomes if o.record is not None]
    failed = [o for o in outcomes if o.status is Status.FAILED]
    reasons: dict[str, int] = {}
    for outcome in failed:
        key = (outcome.reason or "").split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    fuzzing = [o.fuzzing.auroc for o in explained if o.fuzzing is not None]
    return RunSummary(
        features=len(wanted),
        explained=len(explained),
        failed=len(failed),
        resumed=resumed,
        usage=sum((o.usage for o in outcomes), control_usage),
        mean_score=_mean([o.record.auroc for o in explained if o.record is not None]),
        control_score=_mean(control),
        control_features=len(control),
        mean_fuzzing=_mean(fuzzing),
        failure_reasons=reasons,
    )


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
