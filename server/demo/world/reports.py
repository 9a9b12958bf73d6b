"""The world's findings text: a small grammar with paraphrases, and its inverse, a concept parser.

A report has one sentence per concept, always in the same order (line or tube, pacemaker,
pleural effusion, heart), stating it present or absent, then optional normal statements; so
every report decides each concept at a fixed place. With a prior study each finding
is worded by how it changed: "new", "unchanged", or "resolved" ("removed" for devices). The
parser reads any text, a generated report included, and returns the concepts it asserts as
present now: a sentence that names a concept counts unless it negates it ("No ...",
"resolved", "removed"). The grammar is written so that the parser recovers exactly the
concepts a report was written from (tested), which makes it a fair judge of generated reports.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PACEMAKER = "pacemaker"
LINE_OR_TUBE = "line_or_tube"
PLEURAL_EFFUSION = "pleural_effusion"
CARDIOMEGALY = "cardiomegaly"
CONCEPTS: tuple[str, ...] = (PACEMAKER, LINE_OR_TUBE, PLEURAL_EFFUSION, CARDIOMEGALY)

_MENTIONS = {
    PACEMAKER: re.compile(r"\bpacemaker\b|\bpacing\b"),
    LINE_OR_TUBE: re.compile(r"\btube\b|\bcatheter\b|\bline\b"),
    PLEURAL_EFFUSION: re.compile(r"\beffusions?\b"),
    CARDIOMEGALY: re.compile(r"\bcardiomegaly\b|\benlarge"),
}
_NEGATION = re.compile(r"^no\b|\bresolved\b|\bremoved\b")


class Change(enum.Enum):
    """How a finding relates to the prior study; PRESENT when there is no prior."""

    PRESENT = "present"
    NEW = "new"
    UNCHANGED = "unchanged"
    RESOLVED = "resolved"
    ABSENT = "absent"


@dataclass(frozen=True)
class Details:
    """Words that describe the drawn findings, so text and pixels agree."""

    line_kind: str = "endotracheal"
    effusion_side: str = "left"  # "left", "right" or "bilateral"
    effusion_size: str = "small"


_LINE_NAMES = {
    "endotracheal": ("endotracheal tube", "above the carina"),
    "central_venous": ("right jugular central venous catheter", "in the superior vena cava"),
    "nasogastric": ("nasogastric tube", "below the diaphragm"),
}


def _pacemaker(change: Change, details: Details) -> list[str]:
    del details
    return {
        Change.PRESENT: [
            "A left-sided pacemaker is in place with its lead in the right ventricle.",
            "Left chest wall pacemaker with a single lead in the right ventricle.",
            "A cardiac pacemaker projects over the left chest.",
        ],
        Change.NEW: [
            "New left-sided pacemaker with its lead in the right ventricle.",
            "A new cardiac pacemaker projects over the left chest.",
        ],
        Change.UNCHANGED: [
            "The left-sided pacemaker is unchanged.",
            "Unchanged position of the left chest wall pacemaker and its lead.",
        ],
        Change.RESOLVED: [
            "The previously seen pacemaker has been removed.",
            "The pacemaker has been removed since the prior study.",
        ],
        Change.ABSENT: ["No pacemaker."],
    }[change]


def _line(change: Change, details: Details) -> list[str]:
    name, tip = _LINE_NAMES[details.line_kind]
    return {
        Change.PRESENT: [f"The {name} terminates {tip}.", f"A {name} is present, tip {tip}."],
        Change.NEW: [f"New {name} with its tip {tip}.", f"A new {name} terminates {tip}."],
        Change.UNCHANGED: [
            f"The {name} is unchanged in position.",
            f"Unchanged {name}, tip {tip}.",
        ],
        Change.RESOLVED: [
            f"The {name} has been removed.",
            f"The {name} has been removed since the prior study.",
        ],
        Change.ABSENT: ["No lines or tubes."],
    }[change]


def _effusion(change: Change, details: Details) -> list[str]:
    side, size = details.effusion_side, details.effusion_size
    plural = side == "bilateral"
    effusion = f"{side} pleural effusion" + ("s" if plural else "")
    article, be, have = ("", "are", "have") if plural else ("a ", "is", "has")
    blunts = "blunt the costophrenic angles" if plural else "blunts the costophrenic angle"
    return {
        Change.PRESENT: [
            f"{size.capitalize()} {effusion}.",
            f"There {be} {article}{size} {effusion}.",
            f"{(article + size).capitalize()} {effusion} {blunts}.",
        ],
        Change.NEW: [f"New {size} {effusion}.", f"There {be} {article}new {size} {effusion}."],
        Change.UNCHANGED: [f"Unchanged {size} {effusion}.", f"The {effusion} {be} unchanged."],
        Change.RESOLVED: [
            f"The previously seen {effusion} {have} resolved.",
            f"The {effusion} {have} resolved.",
        ],
        Change.ABSENT: ["No pleural effusion.", "The costophrenic angles are sharp."],
    }[change]


def _cardiomegaly(change: Change, details: Details) -> list[str]:
    del details
    return {
        Change.PRESENT: [
            "The heart is enlarged.",
            "Moderate cardiomegaly.",
            "The cardiac silhouette is enlarged.",
        ],
        Change.NEW: ["New cardiomegaly.", "New enlargement of the cardiac silhouette."],
        Change.UNCHANGED: ["Unchanged cardiomegaly.", "The heart remains enlarged, unchanged."],
        Change.RESOLVED: ["Cardiomegaly has resolved.", "The heart size has returned to normal."],
        Change.ABSENT: ["The heart size is normal.", "Normal cardiac silhouette."],
    }[change]


_SENTENCES = {
    LINE_OR_TUBE: _line,
    PACEMAKER: _pacemaker,
    PLEURAL_EFFUSION: _effusion,
    CARDIOMEGALY: _cardiomegaly,
}
_REPORT_ORDER = (LINE_OR_TUBE, PACEMAKER, PLEURAL_EFFUSION, CARDIOMEGALY)
_NORMAL = (
    ("The lungs are clear.", "No focal consolidation."),
    ("No pneumothorax.", "There is no pneumothorax."),
)


def change_of(concept: str, now: frozenset[str], prior: frozenset[str] | None) -> Change:
    if prior is None:
        return Change.PRESENT if concept in now else Change.ABSENT
    if concept in now:
        return Change.UNCHANGED if concept in prior else Change.NEW
    return Change.RESOLVED if concept in prior else Change.ABSENT


def write_findings(
    concepts: frozenset[str],
    prior_concepts: frozenset[str] | None,
    details: Details,
    rng: np.random.Generator,
) -> str:
    """The findings for a study with ``concepts``, worded against ``prior_concepts`` (None:
    no prior); paraphrases and normal statements are drawn from ``rng``."""
    sentences = [
        _pick(_SENTENCES[concept](change_of(concept, concepts, prior_concepts), details), rng)
        for concept in _REPORT_ORDER
    ]
    sentences += [_pick(options, rng) for options in _NORMAL if rng.random() < 0.6]
    return " ".join(sentences)


def concepts_in_text(report: str) -> set[str]:
    """The concepts a report asserts as present now (see the module docstring)."""
    found: set[str] = set()
    for sentence in re.split(r"[.;\n]+", report.lower()):
        sentence = sentence.strip()
        if not sentence or _NEGATION.search(sentence):
            continue
        found |= {concept for concept, mention in _MENTIONS.items() if mention.search(sentence)}
    return found


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]
