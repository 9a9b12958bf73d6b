"""A chest X-ray study and the task asked of MAIRA-2: the domain input of every request.

Images are decoded pixels (numpy arrays) at their full depth: 8-bit, 16-bit or float, greyscale
``[H, W]`` or colour ``[H, W, C]``. The processor turns them into model inputs; nothing here
knows about bytes, media types or protobuf.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class ImageRole(enum.Enum):
    """Which image of a study; the prompt always orders them frontal, lateral, prior."""

    FRONTAL = "frontal"
    LATERAL = "lateral"
    PRIOR = "prior"


class TaskKind(enum.Enum):
    FINDINGS = "findings"
    GROUNDED_FINDINGS = "grounded_findings"
    PHRASE_GROUNDING = "phrase_grounding"


@dataclass(frozen=True)
class Task:
    """What MAIRA-2 is asked to write. ``phrase`` is required for phrase grounding only."""

    kind: TaskKind = TaskKind.FINDINGS
    phrase: str | None = None


@dataclass(frozen=True, eq=False)
class Study:
    """One study: the current frontal image is required; the rest is optional.

    A section left as ``None`` reads "N/A" in the prompt, as MAIRA-2 was trained.
    """

    frontal: np.ndarray
    lateral: np.ndarray | None = None
    prior: np.ndarray | None = None
    indication: str | None = None
    technique: str | None = None
    comparison: str | None = None
    prior_report: str | None = None

    def images(self) -> list[tuple[ImageRole, np.ndarray]]:
        """The present images in prompt order (frontal, lateral, prior)."""
        ordered = [
            (ImageRole.FRONTAL, self.frontal),
            (ImageRole.LATERAL, self.lateral),
            (ImageRole.PRIOR, self.prior),
        ]
        return [(role, pixels) for role, pixels in ordered if pixels is not None]
