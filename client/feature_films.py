"""The films of a dashboard's examples from a local study folder, for pages of dashboards built
without thumbnails (studies hold patient data, so by default a dashboard has ids only).

The folder has the layout the server's training reads: one subfolder per study, named by its
id, holding ``frontal.png|.jpg|.jpeg|.dcm`` and optionally ``lateral.*``, ``prior.*``,
``findings.txt`` (the report, teacher-forced) and ``indication.txt`` and the other sections.
An example's ``image_index`` counts the present images in prompt order (frontal, lateral,
prior). ``with_heatmaps`` asks the server for the heat maps a dashboard did not store, by
encoding each study exactly as the dashboard harvested it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from maira_sae.client.requests import TokenFilter
from maira_sae.client.results import Feature, FeatureExample, ImageGrid, TokenKind
from maira_sae.client.study import IMAGE_ROLES, Study
from maira_sae.client.sync import Client

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm")
_SECTIONS = ("indication", "technique", "comparison", "prior_report")


class StudyFolder:
    """A local study folder; ``films`` is its ``FilmSource`` for ``feature_page_html``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"{self.folder}: not a folder of studies")

    def _image_file(self, study_id: str, role: str) -> Path | None:
        base = self.folder / study_id
        return next((p for ext in IMAGE_EXTENSIONS if (p := base / f"{role}{ext}").is_file()), None)

    def _text(self, study_id: str, name: str) -> str | None:
        path = self.folder / study_id / f"{name}.txt"
        return (path.read_text(encoding="utf-8").strip() or None) if path.is_file() else None

    def has(self, study_id: str) -> bool:
        return self._image_file(study_id, "frontal") is not None

    def study(self, study_id: str) -> tuple[Study, str | None]:
        """The study and its findings (None without findings.txt)."""
        files = {role: self._image_file(study_id, role) for role in IMAGE_ROLES}
        if files["frontal"] is None:
            raise ValueError(f"{self.folder / study_id}: no frontal image")
        study = Study.from_files(
            files["frontal"],
            files["lateral"],
            files["prior"],
            **{name: self._text(study_id, name) for name in _SECTIONS},
        )
        return study, self._text(study_id, "findings")

    def films(self, example: FeatureExample) -> np.ndarray | None:
        """The pixels of the example's image, or None when the folder lacks the study."""
        if example.image_index is None or not self.has(example.study_id):
            return None
        images = self.study(example.study_id)[0].images()
        if example.image_index >= len(images):
            return None
        return images[example.image_index][1].pixels()


def with_heatmaps(
    client: Client, feature: Feature, folder: StudyFolder, sae_id: str = ""
) -> Feature:
    """The feature with a heat map on every image example the folder has a study for, from one
    Encode of each study's image patches (the findings teacher-forced, as the dashboard's
    harvest had them)."""
    if feature.dashboard is None:
        return feature
    grids: dict[tuple[str, int], ImageGrid | None] = {}

    def grid(example: FeatureExample) -> ImageGrid | None:
        key = (example.study_id, example.image_index or 0)
        if key not in grids:
            grids[key] = _encoded_grid(client, folder, feature.feature, *key, sae_id=sae_id)
        return grids[key]

    def filled(examples: tuple[FeatureExample, ...]) -> tuple[FeatureExample, ...]:
        return tuple(
            dataclasses.replace(e, heatmap=grid(e))
            if e.heatmap is None and e.kind is TokenKind.IMAGE_PATCH and folder.has(e.study_id)
            else e
            for e in examples
        )

    dashboard = dataclasses.replace(
        feature.dashboard,
        top_examples=filled(feature.dashboard.top_examples),
        quantile_examples=filled(feature.dashboard.quantile_examples),
    )
    return dataclasses.replace(feature, dashboard=dashboard)


def _encoded_grid(
    client: Client, folder: StudyFolder, feature: int, study_id: str, image_index: int, sae_id: str
) -> ImageGrid | None:
    study, findings = folder.study(study_id)
    if image_index >= len(study.images()):
        return None
    encoded = client.encode(
        study,
        response=findings,
        sae_id=sae_id,
        token_filter=TokenFilter(
            kinds=frozenset({TokenKind.IMAGE_PATCH}), image_indices=frozenset({image_index})
        ),
    )
    cells = [
        (item.token.grid_row or 0, item.token.grid_col or 0, item.activation(feature))
        for item in encoded.tokens
    ]
    if not cells:
        return None
    rows, cols = max(r for r, _, _ in cells) + 1, max(c for _, c, _ in cells) + 1
    values = np.zeros((rows, cols), dtype=np.float32)
    for row, col, value in cells:
        values[row, col] = value
    return ImageGrid(
        image_index=image_index, rows=rows, cols=cols, values=tuple(values.ravel().tolist())
    )
