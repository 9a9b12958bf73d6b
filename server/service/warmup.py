"""The study of the warm-up pass that runs through the engine before health turns SERVING."""

from __future__ import annotations

from maira_sae.server.maira2.study import Study
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image


def warmup_study() -> Study:
    """One synthetic frontal film: no patient data, the same bytes at every start."""
    return Study(frontal=synthetic_chest_image())
