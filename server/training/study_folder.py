"""Read a folder of studies from disk, for offline work (SAE training, evaluation).

Layout: one subfolder per study, in name order; inside it

    frontal.png | frontal.jpg | frontal.jpeg | frontal.dcm    required
    lateral.*, prior.*                                         optional, same extensions
    findings.txt                                               optional: the report, teacher-forced
    indication.txt, technique.txt, comparison.txt,             optional report sections
    prior_report.txt                                           (needs prior.*)

Images are decoded by the server's own decoder (PNG, JPEG, DICOM at full depth). Text files
are UTF-8 and stripped; an empty file counts as missing. Other files are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maira_sae.client.imaging.decode import DecodeLimits, decode_image
from maira_sae.server.maira2.study import Study

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm")
_SECTIONS = ("indication", "technique", "comparison", "prior_report")


@dataclass(frozen=True)
class FolderStudy:
    name: str  # the subfolder's name
    study: Study
    findings: str | None


def read_study_folder(folder: Path) -> list[FolderStudy]:
    """Every study under ``folder``; ``ValueError`` names the first subfolder that is not one."""
    return [read_study(child) for child in study_folders(folder)]


def study_folders(folder: Path) -> list[Path]:
    """The study subfolders of ``folder``, in name order (to read them one at a time)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    children = [child for child in sorted(folder.iterdir()) if child.is_dir()]
    if not children:
        raise ValueError(f"{folder}: no study subfolders")
    return children


def read_study(folder: Path) -> FolderStudy:
    frontal = _image(folder, "frontal")
    if frontal is None:
        raise ValueError(f"{folder}: no frontal image (frontal{'|'.join(IMAGE_EXTENSIONS)})")
    sections = {name: _text(folder / f"{name}.txt") for name in _SECTIONS}
    return FolderStudy(
        name=folder.name,
        study=Study(
            frontal=frontal,
            lateral=_image(folder, "lateral"),
            prior=_image(folder, "prior"),
            **sections,
        ),
        findings=_text(folder / "findings.txt"),
    )


def _image(folder: Path, role: str) -> np.ndarray | None:
    found = [
        folder / f"{role}{ext}" for ext in IMAGE_EXTENSIONS if (folder / f"{role}{ext}").exists()
    ]
    if len(found) > 1:
        raise ValueError(f"{folder}: more than one {role} image: {[p.name for p in found]}")
    if not found:
        return None
    return decode_image(found[0].read_bytes(), None, name=str(found[0]), limits=DecodeLimits())


def _text(path: Path) -> str | None:
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None
