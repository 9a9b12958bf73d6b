"""The layout of a demo folder (a MAIRA-2 snapshot, an SAE folder and its interpretation
table side by side) and ``build_once``, which materialises one atomically.

Both demos share it: the synthetic world (``serve --demo``) and the random-weight schema
checkpoint of the tests and benches.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

MODEL_FOLDER = "maira-2"
SAE_FOLDER = "sae-ef4-layer15"
INTERPRETATIONS_FILE = "interpretations-ef4.csv"
BUILD_MARKER = ".complete"  # written last by build_once: the version of a finished build


def build_once(folder: Path, version: str, write: Callable[[Path], object]) -> Path:
    """Make ``folder`` hold what ``write`` builds, unless a build of ``version`` is there.

    The build goes to a staging folder that is renamed into place, so concurrent or
    interrupted starts never see half a build; a folder of another version is replaced.
    """
    marker = folder / BUILD_MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == version:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    (staging / BUILD_MARKER).write_text(version + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    try:
        staging.rename(folder)
    except OSError:  # another process finished first: its build is identical
        shutil.rmtree(staging, ignore_errors=True)
    return folder
