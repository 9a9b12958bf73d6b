import os

import pytest

from maira_sae.sae.catalogue import FeatureCatalogue
from maira_sae.sae.interpretation_file import (
    InterpretationRecord,
    read_interpretation_file,
    write_interpretation_file,
)


def test_records_round_trip_and_load_in_the_catalogue(tmp_path):
    records = [
        InterpretationRecord(
            9,
            "pleural effusion at the base",
            0.71,
            "offline-contrastive",
            None,
            "detection-phrase",
            40,
            40,
            0.71,
            0.66,
            None,
            "2026-12-05",
        ),
        InterpretationRecord(2, "pacemaker", 0.93, "concept-annotations", concept_auroc=0.93),
    ]
    path = write_interpretation_file(tmp_path / "i.csv", records)
    assert read_interpretation_file(path) == sorted(records, key=lambda r: r.feature)
    assert os.stat(path).st_mode & 0o044 == 0o044
    catalogue = FeatureCatalogue.from_file(path)
    assert catalogue.get(2).explanation == "pacemaker"
    assert catalogue.get(9).score == pytest.approx(0.71)


def test_a_feature_twice_or_a_nan_score_is_refused(tmp_path):
    with pytest.raises(ValueError, match="twice"):
        write_interpretation_file(
            tmp_path / "a.csv", [InterpretationRecord(1, "a"), InterpretationRecord(1, "b")]
        )
    with pytest.raises(ValueError, match="not finite"):
        write_interpretation_file(tmp_path / "b.csv", [InterpretationRecord(1, "a", float("nan"))])


def test_a_bad_cell_names_the_row(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("feature,explanation,score\n3,x,high\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 1: score 'high'"):
        read_interpretation_file(path)
