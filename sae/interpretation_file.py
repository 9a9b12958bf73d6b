"""The interpretation file: one row per explained feature, with where its explanation came from.

This is the contract between whatever writes explanations (the world's concept labels, the
offline explainer, an LLM explainer) and the server that serves them (labels, search, feature
pages). A CSV with a header; the server needs only ``feature``, ``explanation`` and ``score``
(their names are settings, so a release's own table loads too); the other columns are
provenance and may be empty or absent:

==================  =====================================================================
column              meaning
==================  =====================================================================
feature             the SAE feature index (int >= 0)
explanation         plain text, no scores or provenance inside it
score               the interpretation score the server ranks by, in [0, 1]: the
                    detection AUROC of the explanation (0.5 is chance) for explainers,
                    the concept AUROC for concept labels
explainer           what wrote the explanation ("offline-contrastive", "llm",
                    "concept-annotations", ...)
explainer_model     the LLM (or empty)
scorer              what computed ``score`` ("detection-phrase", "detection-llm",
                    "concept-auroc", ...)
n_activating        held-out activating examples the scorer used
n_non_activating    held-out non-activating examples the scorer used
auroc               detection AUROC
balanced_accuracy   detection balanced accuracy
concept_auroc       AUROC of the feature for a known concept (the synthetic world only)
created             ISO 8601 date the row was written
==================  =====================================================================
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

INTERPRETATION_COLUMNS = (
    "feature",
    "explanation",
    "score",
    "explainer",
    "explainer_model",
    "scorer",
    "n_activating",
    "n_non_activating",
    "auroc",
    "balanced_accuracy",
    "concept_auroc",
    "created",
)


@dataclass(frozen=True)
class InterpretationRecord:
    """One row of the interpretation file; ``None`` is written as an empty cell."""

    feature: int
    explanation: str
    score: float | None = None
    explainer: str | None = None
    explainer_model: str | None = None
    scorer: str | None = None
    n_activating: int | None = None
    n_non_activating: int | None = None
    auroc: float | None = None
    balanced_accuracy: float | None = None
    concept_auroc: float | None = None
    created: str | None = None


def write_interpretation_file(
    path: str | os.PathLike[str], records: Iterable[InterpretationRecord]
) -> Path:
    """Write ``records`` (sorted by feature) to a CSV the server loads as it is; the file is
    readable by the group and others (0644 under the usual umask), never 0600."""
    path = Path(path)
    rows = sorted(records, key=lambda record: record.feature)
    seen: set[int] = set()
    for record in rows:
        if record.feature in seen:
            raise ValueError(f"feature {record.feature} is interpreted twice")
        seen.add(record.feature)
        for name in ("score", "auroc", "balanced_accuracy", "concept_auroc"):
            value = getattr(record, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"feature {record.feature}: {name} {value!r} is not finite")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(INTERPRETATION_COLUMNS)
        for record in rows:
            writer.writerow([_cell(getattr(record, name)) for name in INTERPRETATION_COLUMNS])
    return path


def read_interpretation_file(path: str | os.PathLike[str]) -> list[InterpretationRecord]:
    """The records of a file in this format (absent provenance columns read as ``None``)."""
    types = {field.name: field.type for field in fields(InterpretationRecord)}
    with Path(path).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    records = []
    for number, row in enumerate(rows, start=1):
        values: dict[str, object] = {}
        for name in INTERPRETATION_COLUMNS:
            text = (row.get(name) or "").strip()
            try:
                values[name] = _parse(text, types[name])
            except ValueError:
                raise ValueError(f"{path}: row {number}: {name} {text!r} is not valid") from None
        if values["feature"] is None:
            raise ValueError(f"{path}: row {number}: no feature index")
        values["explanation"] = values["explanation"] or ""
        records.append(InterpretationRecord(**values))  # type: ignore[arg-type]
    return records


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _parse(text: str, annotation: object) -> object:
    if not text:
        return None
    if annotation in ("int", "int | None"):
        number = int(text)
        if number < 0:
            raise ValueError(text)
        return number
    if annotation == "float | None":
        return float(text)
    return text
