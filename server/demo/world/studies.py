"""Synthetic chest X-ray studies whose concepts are known: the world the demo model learns.

A study is a frontal film, sometimes a lateral film and sometimes a prior frontal film with
its own report, plus the findings text for the current study; every pixel and word is a pure
function of the seed. This is a toy world for demonstrating SAE features and steering, not a
model of radiology.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from maira_sae.server.demo.world.radiographs import Box, Findings, draw_frontal, draw_lateral
from maira_sae.server.demo.world.reports import (
    CARDIOMEGALY,
    CONCEPTS,
    LINE_OR_TUBE,
    PACEMAKER,
    PLEURAL_EFFUSION,
    Details,
    write_findings,
)
from maira_sae.server.maira2.study import Study

PREVALENCE = 0.3  # of each concept, independently
LATERAL_RATE = 0.3
PRIOR_RATE = 0.35
# A prior shares a current concept with this probability, and has an absent one with the other.
PERSISTS, APPEARS_IN_PRIOR = 0.6, 0.2

_INDICATIONS = (
    "Dyspnea.",
    "Cough and fever.",
    "Shortness of breath.",
    "Chest pain.",
    "Follow-up.",
    "Pre-operative assessment.",
)
_LINE_KINDS = ("endotracheal", "central_venous", "nasogastric")


@dataclass(frozen=True, eq=False)
class WorldStudy:
    """One synthetic study. ``prior_concepts`` and ``prior_findings`` are None without a prior
    image; ``boxes`` locate each current finding on the frontal image (pixels)."""

    frontal: np.ndarray  # uint8 [H, W]
    lateral: np.ndarray | None
    prior: np.ndarray | None
    concepts: frozenset[str]
    prior_concepts: frozenset[str] | None
    findings: str
    prior_findings: str | None
    indication: str
    technique: str
    comparison: str | None
    boxes: Mapping[str, Box] = field(default_factory=dict)

    def to_study(self) -> Study:
        """The study as the server takes it (the findings are what the model should write)."""
        return Study(
            frontal=self.frontal,
            lateral=self.lateral,
            prior=self.prior,
            indication=self.indication,
            technique=self.technique,
            comparison=self.comparison,
            prior_report=self.prior_findings,
        )


def generate_study(
    seed: int | np.random.Generator,
    *,
    concepts: Collection[str] | None = None,
    with_lateral: bool | None = None,
    with_prior: bool | None = None,
) -> WorldStudy:
    """A study drawn from ``seed``; ``concepts``, ``with_lateral`` and ``with_prior`` fix what
    would otherwise be drawn (the rest of the study still comes from the seed)."""
    rng = np.random.default_rng(seed)
    drawn = frozenset(c for c in CONCEPTS if rng.random() < PREVALENCE)
    lateral_drawn, prior_drawn = rng.random() < LATERAL_RATE, rng.random() < PRIOR_RATE
    now = drawn if concepts is None else _checked(concepts)
    has_lateral = lateral_drawn if with_lateral is None else with_lateral
    has_prior = prior_drawn if with_prior is None else with_prior

    details = _details(rng)  # shared with the prior: the same device, the same effusion side
    prior_concepts = prior_findings = prior_image = None
    if has_prior:
        prior_concepts = frozenset(
            c for c in CONCEPTS if rng.random() < (PERSISTS if c in now else APPEARS_IN_PRIOR)
        )
        prior_image = draw_frontal(_findings(prior_concepts, details, rng), rng).pixels
        prior_findings = write_findings(prior_concepts, None, details, rng)

    frontal = draw_frontal(_findings(now, details, rng), rng)
    lateral = draw_lateral(_findings(now, details, rng), rng).pixels if has_lateral else None
    findings = write_findings(now, prior_concepts, details, rng)
    return WorldStudy(
        frontal=frontal.pixels,
        lateral=lateral,
        prior=prior_image,
        concepts=now,
        prior_concepts=prior_concepts,
        findings=findings,
        prior_findings=prior_findings,
        indication=_INDICATIONS[int(rng.integers(len(_INDICATIONS)))],
        technique="PA and lateral views of the chest." if has_lateral else "PA view of the chest.",
        comparison="Prior chest radiograph." if has_prior else None,
        boxes=frontal.boxes,
    )


def world_dataset(n: int, seed: int) -> list[WorldStudy]:
    """``n`` studies; study ``i`` comes from the seed sequence ``(seed, i)``, so datasets with
    different seeds are independent and a prefix of a dataset is the smaller dataset."""
    return [generate_study(np.random.default_rng([seed, i])) for i in range(n)]


def _checked(concepts: Collection[str]) -> frozenset[str]:
    unknown = set(concepts) - set(CONCEPTS)
    if unknown:
        raise ValueError(f"unknown concepts {sorted(unknown)}; the world has {list(CONCEPTS)}")
    return frozenset(concepts)


def _details(rng: np.random.Generator) -> Details:
    return Details(
        line_kind=_LINE_KINDS[int(rng.integers(len(_LINE_KINDS)))],
        effusion_side=("left", "right", "bilateral")[int(rng.integers(3))],
        effusion_size=("small", "moderate")[int(rng.integers(2))],
    )


def _findings(concepts: frozenset[str], details: Details, rng: np.random.Generator) -> Findings:
    sides = {"bilateral": frozenset({"left", "right"})}.get(
        details.effusion_side, frozenset({details.effusion_side})
    )
    level = {"small": 0.22, "moderate": 0.36}[details.effusion_size] + rng.uniform(-0.03, 0.03)
    return Findings(
        pacemaker=PACEMAKER in concepts,
        line_kind=details.line_kind if LINE_OR_TUBE in concepts else None,
        effusion_sides=sides if PLEURAL_EFFUSION in concepts else frozenset(),
        effusion_level=level,
        cardiomegaly=CARDIOMEGALY in concepts,
    )
