"""The progress file: whole lines on disk, a torn last line ignored and cut, ranges merged."""

from __future__ import annotations

import pytest

from maira_sae.sae.interpretation_file import InterpretationRecord
from maira_sae.server.training.explain.progress import (
    FeatureOutcome,
    ProgressFile,
    Status,
    merge_progress,
    progress_path_for,
)
from maira_sae.server.training.explain.protocols import FuzzingScore, Usage


def explained(feature: int, text: str = "pacemaker leads") -> FeatureOutcome:
    record = InterpretationRecord(feature, text, score=0.9, auroc=0.9, n_activating=10)
    fuzzing = FuzzingScore(0.8, 0.75, 5, 5)
    return FeatureOutcome(feature, Status.EXPLAINED, record, fuzzing=fuzzing, usage=Usage(3, 40, 9))


def failed(feature: int) -> FeatureOutcome:
    return FeatureOutcome(feature, Status.FAILED, reason="HTTP 500: boom", raw_text="{\n oops")


def test_outcomes_read_back_as_written(tmp_path):
    progress = ProgressFile(tmp_path / "p.jsonl")
    assert progress.finished() == {}
    progress.append(explained(4, "an «odd»\nexplanation, with, commas"))
    progress.append(failed(5))
    assert progress.finished() == {
        4: explained(4, "an «odd»\nexplanation, with, commas"),
        5: failed(5),
    }
    assert len(progress.path.read_text().splitlines()) == 2


def test_a_torn_last_line_is_ignored_then_cut_before_the_next_append(tmp_path):
    progress = ProgressFile(tmp_path / "p.jsonl")
    progress.append(explained(1))
    whole = explained(2).to_json()
    with progress.path.open("a") as handle:
        handle.write(whole[: len(whole) // 2])  # what kill -9 mid-write leaves
    assert set(progress.finished()) == {1}
    progress.append(failed(2))
    assert progress.finished() == {1: explained(1), 2: failed(2)}


def test_a_broken_line_inside_the_file_is_an_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"feature": 1, "status": "explained"\n' + failed(2).to_json() + "\n")
    with pytest.raises(ValueError, match="line 1 is not a progress line"):
        ProgressFile(path).finished()


def test_merge_keeps_one_outcome_per_feature_explained_over_failed(tmp_path):
    first, second = ProgressFile(tmp_path / "a.jsonl"), ProgressFile(tmp_path / "b.jsonl")
    first.append(explained(0))
    first.append(failed(1))
    second.append(explained(1))  # a later run of the range retried it
    second.append(failed(2))
    merged = merge_progress([first.path, second.path])
    assert [(o.feature, o.status) for o in merged] == [
        (0, Status.EXPLAINED),
        (1, Status.EXPLAINED),
        (2, Status.FAILED),
    ]
    second.append(explained(0))
    with pytest.raises(ValueError, match="feature 0 is explained in two progress files"):
        merge_progress([first.path, second.path])


def test_the_progress_file_sits_beside_the_output(tmp_path):
    assert progress_path_for(tmp_path / "out.csv") == tmp_path / "out.progress.jsonl"
