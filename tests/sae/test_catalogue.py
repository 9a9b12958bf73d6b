"""Feature interpretations from CSV and JSON Lines files, and BM25 search over them."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from pathlib import Path

import pytest

from maira_sae.sae import FeatureCatalogue, FeatureInterpretation
from maira_sae.sae.catalogue import MatchQuality, Provenance, tokenize
from maira_sae.sae.interpretation_file import (
    INTERPRETATION_COLUMNS,
    InterpretationRecord,
    write_interpretation_file,
)

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
    return [match.interpretation.feature for match in results]


def relevances(results) -> list[float]:
    return [match.relevance for match in results]


def test_reads_every_row(catalogue):
    assert len(catalogue) == len(ROWS)
    assert catalogue.get(3) == FeatureInterpretation(3, "Small left pleural effusion", 0.88)
    assert catalogue.get(9) == FeatureInterpretation(9, None, None)
    assert catalogue.get(99) is None


def test_pacemaker_features_come_first(catalogue):
    results = catalogue.search("pacemaker")
    assert set(features(results)[:3]) == {0, 1, 2}
    assert len(results) == 3  # nothing else mentions pacemakers
    assert all(match.quality is MatchQuality.PHRASE for match in results)
    assert features(results) == [0, 1, 2]  # each contains the phrase: by interpretation score
    assert all(relevance > 0 for relevance in relevances(results))


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

    results = catalogue.search("effusion")  # both contain the phrase: equal, by index
    assert features(results) == [0, 1]
    assert relevances(results) == pytest.approx([bm25(1, 2), bm25(3, 4)])
    results = catalogue.search("small effusion")  # a partial match for both: by BM25
    assert features(results) == [1, 0]
    assert [match.quality for match in results] == [MatchQuality.PARTIAL] * 2


def test_ties_go_to_the_higher_interpretation_score_then_the_lower_index():
    scores = {7: 0.9, 3: None, 5: 0.4, 9: 0.9}
    catalogue = FeatureCatalogue(
        FeatureInterpretation(i, "pacemaker", s) for i, s in scores.items()
    )
    assert features(catalogue.search("pacemaker")) == [7, 9, 5, 3]


def test_a_misspelt_word_finds_the_labels_spelt_nearly_so(catalogue):
    exact = catalogue.search("pacemaker")
    typo = catalogue.search("pacemakr")
    assert set(features(typo)) == set(features(exact))
    assert all(match.quality is MatchQuality.PARTIAL for match in typo)
    weighed_down = {m.interpretation.feature: m.relevance for m in typo}
    assert all(0 < weighed_down[m.interpretation.feature] < m.relevance for m in exact)
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


def test_an_exact_label_beats_a_longer_one_that_scores_higher():
    catalogue = FeatureCatalogue(
        [
            FeatureInterpretation(1, "pacemaker lead in the right ventricle", 0.99),
            FeatureInterpretation(2, "pacemakers", 0.6),  # the same words once folded
            FeatureInterpretation(3, "pacemaker", 0.8),
            FeatureInterpretation(4, "pacemaker generator pocket pacemaker", 0.95),
            FeatureInterpretation(5, "left pacemaker", 0.7),
        ]
    )
    results = catalogue.search("Pacemaker")
    assert features(results) == [3, 2, 1, 4, 5]
    assert [m.quality for m in results] == [MatchQuality.EXACT] * 2 + [MatchQuality.PHRASE] * 3


def test_a_whole_phrase_beats_its_words_apart_and_a_fuzzy_match():
    catalogue = FeatureCatalogue(
        [
            FeatureInterpretation(1, "effusion, pleural thickening", 0.99),
            FeatureInterpretation(2, "small left pleural effusion", 0.5),
            FeatureInterpretation(3, "pleural effusions", 0.4),
            FeatureInterpretation(4, "pleura effusion", 0.98),  # spelt nearly so
        ]
    )
    results = catalogue.search("pleural effusion")
    assert features(results)[:2] == [3, 2]
    assert [m.quality for m in results[:2]] == [MatchQuality.EXACT, MatchQuality.PHRASE]
    assert {m.quality for m in results[2:]} == {MatchQuality.PARTIAL}
    assert set(features(results[2:])) == {1, 4}


def test_the_provenance_columns_are_kept(tmp_path):
    provenance = Provenance(
        explainer="offline-contrastive",
        scorer="detection-phrase",
        n_activating=40,
        n_non_activating=60,
        auroc=0.91,
        balanced_accuracy=0.85,
        created="2026-12-05",
    )
    path = write_interpretation_file(
        tmp_path / "explained.csv",
        [
            InterpretationRecord(3, "pacemaker", 0.91, **dataclasses.asdict(provenance)),
            InterpretationRecord(5, "no provenance given", 0.5),
        ],
    )
    catalogue = FeatureCatalogue.from_file(path)
    assert catalogue.get(3) == FeatureInterpretation(3, "pacemaker", 0.91, provenance)
    assert catalogue.get(5).provenance == Provenance()  # the columns are there, empty


def test_provenance_in_json_lines_with_user_named_columns(tmp_path):
    path = tmp_path / "release.jsonl"
    rows = [
        {"latent": 2, "description": "rib fracture", "s": 0.7, "explainer": "llm", "auroc": 0.7},
        {"latent": 4, "description": "pacemaker", "s": 0.9, "n_activating": 12},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    catalogue = FeatureCatalogue.from_file(
        path, feature_column="latent", explanation_column="description", score_column="s"
    )
    assert catalogue.get(2).provenance == Provenance(explainer="llm", auroc=0.7)
    assert catalogue.get(4).provenance == Provenance(n_activating=12)


def test_a_three_column_file_has_no_provenance(catalogue):
    assert catalogue.get(3).provenance is None


def test_bad_provenance_values_name_the_row_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("feature,explanation,score,n_activating\n1,a,0.5,many\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*row 1: n_activating 'many'"):
        FeatureCatalogue.from_file(path)
    path.write_text("feature,explanation,score,auroc\n1,a,0.5,nan\n")
    with pytest.raises(ValueError, match=r"row 1: auroc 'nan' is not finite"):
        FeatureCatalogue.from_file(path)


def test_the_provenance_fields_are_the_files_provenance_columns():
    names = tuple(field.name for field in dataclasses.fields(Provenance))
    assert names == INTERPRETATION_COLUMNS[3:]  # after feature, explanation, score
