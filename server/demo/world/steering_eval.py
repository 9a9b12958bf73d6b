"""Does steering a feature do what its label says? Measured on studies without the concept.

For one SAE feature labelled with a concept, each study (chosen *without* the concept) gets a
greedy baseline report and one steered report per (mode, strength) of the sweep, all in one
batch through the server's own ``Engine.generate`` (so exactly what GenerateSteered would
return). The world's concept parser then reads every report:

- concept rate: the share of steered reports that assert the concept (the baseline's share is
  the floor to beat);
- others changed: the share of studies whose set of *other* concepts differs from their
  baseline's (steering that also adds or removes unrelated findings is not specific);
- text changed: the share whose report differs from the baseline at all.

ADD adds ``strength`` along the unit decoder row; CLAMP sets the feature to ``strength``
(``maira_sae.sae.steering``), at every position by default (prompt and generated tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from maira_sae.sae.interventions import Intervention, SteeringMode
from maira_sae.server.demo.world.reports import CONCEPTS, concepts_in_text
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.types import (
    GenerateRequest,
    GenerationEvent,
    GenerationSettings,
    PositionScope,
    ScopedIntervention,
    Variant,
    VariantFinished,
)
from maira_sae.server.maira2.study import Study

ConceptParser = Callable[[str], set[str]]


@dataclass(frozen=True)
class SteeringPoint:
    mode: str  # SteeringMode value
    strength: float
    concept_rate: float
    others_changed_rate: float
    text_changed_rate: float


@dataclass(frozen=True)
class SteeringCurve:
    feature: int
    concept: str
    num_studies: int
    baseline_concept_rate: float
    points: tuple[SteeringPoint, ...]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class _Sweep:
    mode: SteeringMode
    strength: float


def evaluate_steering(
    engine: Engine,
    studies: Sequence[Study],
    *,
    feature: int,
    concept: str,
    strengths: Sequence[float],
    modes: Sequence[SteeringMode] = (SteeringMode.ADD, SteeringMode.CLAMP),
    scope: PositionScope = PositionScope.ALL,
    max_new_tokens: int = 60,
    sae_id: str = "",
    parse: ConceptParser = concepts_in_text,
    concepts: Sequence[str] = CONCEPTS,
) -> SteeringCurve:
    """The steering curve of ``feature`` for ``concept`` over ``studies`` (which should not
    have the concept); greedy decoding, seed 0."""
    if concept not in concepts:
        raise ValueError(f"unknown concept {concept!r}; known: {list(concepts)}")
    if not studies:
        raise ValueError("no studies to steer")
    sweep = [_Sweep(mode, float(strength)) for mode in modes for strength in strengths]
    variants = (Variant(name="baseline"), *(_variant(feature, point, scope) for point in sweep))
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
    requests = [
        GenerateRequest(s, settings=settings, variants=variants, sae_id=sae_id) for s in studies
    ]
    reports = [_generate(engine, request) for request in requests]
    others = set(concepts) - {concept}
    parsed = [[parse(text) for text in texts] for texts in reports]
    points = []
    for column, point in enumerate(sweep, start=1):
        points.append(
            SteeringPoint(
                mode=point.mode.value,
                strength=point.strength,
                concept_rate=_mean(concept in found[column] for found in parsed),
                others_changed_rate=_mean(
                    found[column] & others != found[0] & others for found in parsed
                ),
                text_changed_rate=_mean(texts[column] != texts[0] for texts in reports),
            )
        )
    return SteeringCurve(
        feature=feature,
        concept=concept,
        num_studies=len(studies),
        baseline_concept_rate=_mean(concept in found[0] for found in parsed),
        points=tuple(points),
    )


def format_curve(curve: SteeringCurve) -> str:
    """The curve as a plain-text table, one row per (mode, strength)."""
    lines = [
        f"feature {curve.feature} -> {curve.concept!r} over {curve.num_studies} studies without "
        f"it; baseline concept rate {curve.baseline_concept_rate:.2f}",
        f"{'mode':<6} {'strength':>9} {'concept':>8} {'others':>8} {'text':>8}",
    ]
    lines += [
        f"{p.mode:<6} {p.strength:>9.3g} {p.concept_rate:>8.2f} {p.others_changed_rate:>8.2f} "
        f"{p.text_changed_rate:>8.2f}"
        for p in curve.points
    ]
    return "\n".join(lines)


def _variant(feature: int, point: _Sweep, scope: PositionScope) -> Variant:
    intervention = Intervention(mode=point.mode, value=point.strength, feature=feature)
    return Variant(
        interventions=(ScopedIntervention(intervention, scope),),
        name=f"{point.mode.value} {point.strength:g}",
    )


def _generate(engine: Engine, request: GenerateRequest) -> list[str]:
    """Every variant's full report text, in variant order."""
    finished: dict[int, str] = {}

    def collect(event: GenerationEvent) -> None:
        if isinstance(event, VariantFinished):
            finished[event.variant_index] = event.text

    engine.generate(engine.prepare_generation(request), collect, lambda: False)
    return [finished[index] for index in range(len(request.variants))]


def _mean(flags: Iterable[bool]) -> float:
    values = list(flags)
    return sum(values) / len(values)
