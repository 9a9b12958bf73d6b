"""The world's held-out studies written as a study folder (the layout of
``maira_sae.server.training.study_folder``), so the research commands (``train-sae``,
``build-dashboard``, ``explain``) run on them as on real studies.

Each study is one subfolder named as the world's dashboard names it (``held-out-000``, ...):
``frontal.png`` and, when the study has them, ``lateral.png`` and ``prior.png`` (8-bit
greyscale, lossless), ``findings.txt`` and the report sections. The concept annotations are
not written: a study folder holds what a real one holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from maira_sae.server.demo.world.dashboard import DASHBOARD_SEED, DASHBOARD_STUDIES, study_id
from maira_sae.server.demo.world.studies import WorldStudy, world_dataset


def write_held_out_studies(folder: Path, count: int = DASHBOARD_STUDIES) -> list[Path]:
    """The first ``count`` held-out studies (the dashboard's, by default) into ``folder``."""
    return write_study_folder(folder, world_dataset(count, DASHBOARD_SEED))


def write_study_folder(folder: Path, studies: Sequence[WorldStudy]) -> list[Path]:
    """One subfolder per study, named ``study_id(index)``; returns them in order."""
    written = []
    for index, study in enumerate(studies):
        target = Path(folder) / study_id(index)
        target.mkdir(parents=True, exist_ok=True)
        for role, pixels in (
            ("frontal", study.frontal),
            ("lateral", study.lateral),
            ("prior", study.prior),
        ):
            if pixels is not None:
                _write_png(target / f"{role}.png", pixels)
        for name, text in (
            ("findings", study.findings),
            ("indication", study.indication),
            ("technique", study.technique),
            ("comparison", study.comparison),
            ("prior_report", study.prior_findings),
        ):
            if text:
                (target / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
        written.append(target)
    return written


def _write_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
