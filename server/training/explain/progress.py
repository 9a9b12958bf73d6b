"""The explain run's progress file: one JSON line per finished feature, appended and synced.

    ProgressFile(path).finished() -> dict[int, FeatureOutcome]   # the latest line per feature
    ProgressFile(path).append(outcome)
    merge_progress(paths) -> list[FeatureOutcome]                # several ranges' files, as one

A line is written whole and fsynced before the next feature's line, so a run killed at any
point (kill -9 included) leaves every finished feature on disk and at most one torn last line,
which reading ignores and the next append cuts off first. A rerun skips the features the file
holds, so none is explained twice and none is lost. Each line is either

    {"feature": 7, "status": "explained", "record": {...InterpretationRecord...},
     "usage": {...}, "fuzzing": {...} | null}
    {"feature": 8, "status": "failed", "reason": "...", "raw_text": "..." | null, "usage": {...}}

The interpretation file is a function of the progress files (``merge_progress``): ranges run as
separate processes or pods write one file each, and one merge writes the result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from maira_sae.sae.interpretation_file import InterpretationRecord
from maira_sae.server.training.explain.protocols import FuzzingScore, Usage


class Status(StrEnum):
    EXPLAINED = "explained"
    FAILED = "failed"


@dataclass(frozen=True)
class FeatureOutcome:
    feature: int
    status: Status
    record: InterpretationRecord | None = None  # when explained
    fuzzing: FuzzingScore | None = None  # when explained and the LLM fuzzing scorer ran
    reason: str | None = None  # when failed
    raw_text: str | None = None  # when failed on a reply: what the endpoint said
    usage: Usage = field(default_factory=Usage)

    def to_json(self) -> str:
        line = {
            "feature": self.feature,
            "status": self.status.value,
            "record": None if self.record is None else asdict(self.record),
            "fuzzing": None if self.fuzzing is None else asdict(self.fuzzing),
            "reason": self.reason,
            "raw_text": self.raw_text,
            "usage": asdict(self.usage),
        }
        return json.dumps(line, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> FeatureOutcome:
        line = json.loads(text)
        record, fuzzing = line.get("record"), line.get("fuzzing")
        return cls(
            feature=int(line["feature"]),
            status=Status(line["status"]),
            record=None if record is None else InterpretationRecord(**record),
            fuzzing=None if fuzzing is None else FuzzingScore(**fuzzing),
            reason=line.get("reason"),
            raw_text=line.get("raw_text"),
            usage=Usage(**line.get("usage", {})),
        )


class ProgressFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def finished(self) -> dict[int, FeatureOutcome]:
        """The latest outcome of each feature in the file (a torn last line is ignored)."""
        return {outcome.feature: outcome for outcome in self._read()}

    def append(self, outcome: FeatureOutcome) -> None:
        """Append ``outcome`` as one line, on disk before this returns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(outcome.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _read(self) -> list[FeatureOutcome]:
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8", errors="replace")
        # The last piece is "" after a final newline, else a line a kill cut short: unfinished.
        complete = text.split("\n")[:-1]
        outcomes = []
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                outcomes.append(FeatureOutcome.from_json(line))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{self.path}: line {number} is not a progress line: {error}"
                ) from None
        return outcomes

    def _cut_torn_tail(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)


def merge_progress(paths: Iterable[str | os.PathLike[str]]) -> list[FeatureOutcome]:
    """The outcomes of several progress files (ranges run apart), one per feature, by feature;
    ``ValueError`` when two files explained the same feature (overlapping ranges)."""
    merged: dict[int, FeatureOutcome] = {}
    for path in paths:
        for feature, outcome in ProgressFile(path).finished().items():
            earlier = merged.get(feature)
            if earlier is not None and earlier.status is outcome.status is Status.EXPLAINED:
                raise ValueError(f"feature {feature} is explained in two progress files ({path})")
            if earlier is None or outcome.status is Status.EXPLAINED:
                merged[feature] = outcome
    return [merged[feature] for feature in sorted(merged)]


def progress_path_for(output: str | os.PathLike[str]) -> Path:
    """The progress file beside an interpretation file: ``out.csv`` -> ``out.progress.jsonl``."""
    output = Path(output)
    return output.with_name(output.stem + ".progress.jsonl")
