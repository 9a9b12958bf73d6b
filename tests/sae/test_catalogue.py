"""Feature interpretations from CSV and JSON Lines files, and BM25 search over them."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from maira_sae.sae import FeatureCatalogue, FeatureInterpretation
from maira_sae.sae.catalogue import tokenize

ROWS = [
    (0, "Pacemaker leads projecting over the right heart", 0.91),
    (1, "Cardiac pacemakers and ICD devices in the chest wall", 0.84),
    (2, "Dual-chamber pacemaker generator, left chest", 0.77),
    (3, "Small left pleural effusion", 0.88),
    (4, "Bilateral pleural effusions with basal atelectasis", 0.81),
    (5, "Endotracheal tube and nasogastric tube", 0.72),
    (6, "Central venous lines and other support lines", 0.69),
    (7, "Cardiomegaly: enlarged cardiac silhouette", 0.9),
    (8, "Patchy opacities in the lower lobes", 0.6),
    (9, "", None),
    (10, "The word 'comparison' in report text", 0.4),
]


def write_csv(path: Path, header=("feature", "explanation", "score")) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for feature, explanation, score in ROWS:
            writer.writerow([feature, explanation, "" if score is None else score])
    return path


def write_jsonl(path: Path, keys=("latent", "description", "interp_score")) -> Path:
    lines = [json.dumps(dict(zip(keys, row, strict=True))) for row in ROWS]
    path.write_text("\n".join(lines) + "\n\n")
    return path


@pytest.fixture
def catalogue(tmp_path) -> FeatureCatalogue:
    return FeatureCatalogue.from_file(write_csv(tmp_path / "interpretations.csv"))


def features(results) -> list[int]:
    return [interpretation.feature for interpretation, _ in results]


def test_reads_every_row(catalogue):
    assert len(catalogue) == len(ROWS)
    assert catalogue.get(3) == FeatureInterpretation(3, "Small left pleural effusion", 0.88)
    assert catalogue.get(9) == FeatureInterpretation(9, None, None)
    assert catalogue.get(99) is None


def test_pacemaker_features_come_first(catalogue):
    results = catalogue.search("pacemaker")
    assert set(features(results)[:3]) == {0, 1, 2}
    assert len(results) == 3  # nothing else mentions pacemakers
    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0


def test_plural_query_finds_singular_and_plural(catalogue):
    assert set(features(catalogue.search("pleural effusions"))[:2]) == {3, 4}
    assert features(catalogue.search("opacity")) == [8]
    assert set(features(catalogue.search("lines and tubes"))) == {5, 6}


def test_limit_and_empty_queries(catalogue):
    assert len(catalogue.search("left chest cardiac", limit=2)) == 2
    assert catalogue.search("") == []
    assert catalogue.search("the of and") == []
    assert catalogue.search("pneumothorax") == []
    with pytest.raises(ValueError, match="limit"):
        catalogue.search("pacemaker", limit=0)


def test_scores_follow_bm25():
    texts = {0: "pleural effusion", 1: "effusion effusion effusion small", 2: "cardiomegaly"}
    catalogue = FeatureCatalogue(FeatureInterpretation(i, t, None) for i, t in texts.items())
    average_length = (2 + 4 + 1) / 3
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))

    def bm25(tf: int, length: int) -> float:
        return idf * tf * 2.5 / (tf + 1.5 * (0.25 + 0.75 * length / average_length))

    results = catalogue.search("effusion")
    assert features(results) == [1, 0]
    assert [score for _, score in results] == pytest.approx([bm25(3, 4), bm25(1, 2)])


def test_ties_go_to_the_higher_interpretation_score_then_the_lower_index():
    scores = {7: 0.9, 3: None, 5: 0.4, 9: 0.9}
    catalogue = FeatureCatalogue(
        FeatureInterpretation(i, "pacemaker", s) for i, s in scores.items()
    )
    assert features(catalogue.search("pacemaker")) == [7, 9, 5, 3]


def test_a_misspelt_word_finds_the_labels_spelt_nearly_so(catalogue):
    exact = catalogue.search("pacemaker")
    typo = catalogue.search("pacemakr")
    assert features(typo) == features(exact)
    assert all(0 < t < e for (_, t), (_, e) in zip(typo, exact, strict=True))  # weighed down
    assert catalogue.search("xylophone") == []


def test_suggestions_name_the_nearest_labels():
    catalogue = FeatureCatalogue(
        FeatureInterpretation(i, label, 0.5)
        for i, label in enumerate(("pacemaker lead", "pleural effusion", "rib fracture"))
    )
    assert catalogue.suggest("pleural efusions", limit=1) == ["pleural effusion"]
    assert len(catalogue.suggest("anything", limit=2)) == 2
    assert FeatureCatalogue.empty().suggest("pacemaker") == []


def test_tokenizer_folds_plurals():
    assert tokenize("Pacemakers, EFFUSIONS; opacities & masses (status)") == [
        "pacemaker",
        "effusion",
        "opacity",
        "mass",
        "status",
    ]
    assert tokenize("the lines of the tubes") == ["line", "tube"]


def test_jsonl_with_configured_columns(tmp_path):
    path = write_jsonl(tmp_path / "interpretations.jsonl")
    catalogue = FeatureCatalogue.from_file(
        path, feature_column="latent", explanation_column="description", score_column="interp_score"
    )
    assert len(catalogue) == len(ROWS)
    assert catalogue.get(7) == FeatureInterpretation(7, ROWS[7][1], 0.9)
    assert set(features(catalogue.search("pacemakers"))) == {0, 1, 2}


def test_table_without_scores(tmp_path):
    path = write_csv(tmp_path / "plain.csv", header=("feature", "explanation", "other"))
    catalogue = FeatureCatalogue.from_file(path, score_column=None)
    assert catalogue.get(0).score is None


@pytest.mark.parametrize("writer", [write_csv, write_jsonl])
def test_missing_column_names_file_and_column(tmp_path, writer):
    path = writer(tmp_path / ("table.csv" if writer is write_csv else "table.jsonl"))
    with pytest.raises(ValueError, match=re.escape(path.name) + r".*'feature_id'"):
        FeatureCatalogue.from_file(path, feature_column="feature_id")


def test_bad_values_name_the_file(tmp_path):
    duplicate = tmp_path / "dup.csv"
    duplicate.write_text("feature,explanation,score\n1,a,0.5\n1,b,0.6\n")
    with pytest.raises(ValueError, match=r"dup\.csv.*feature 1 is interpreted twice"):
        FeatureCatalogue.from_file(duplicate)
    bad_index = tmp_path / "index.csv"
    bad_index.write_text("feature,explanation,score\nx,a,0.5\n")
    with pytest.raises(ValueError, match=r"index\.csv.*row 1"):
        FeatureCatalogue.from_file(bad_index)
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text('{"feature": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl.*line 2"):
        FeatureCatalogue.from_file(bad_json)
    with pytest.raises(ValueError, match=r"table\.xlsx.*\.csv or \.jsonl"):
        FeatureCatalogue.from_file(tmp_path / "table.xlsx")


def test_empty_catalogue():
    catalogue = FeatureCatalogue.empty()
    assert len(catalogue) == 0
    assert catalogue.search("pacemaker") == []
    assert catalogue.get(0) is None
