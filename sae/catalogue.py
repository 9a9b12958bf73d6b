"""Feature interpretations (LLM-written explanations and their scores) and text search over them.

The release's column names are unknown, so the feature, explanation and score columns are
settings; the provenance columns of ``interpretation_file`` (explainer, scorer, example counts,
AUROCs, date) are read by their own names when the file has them.

Search ranks by match quality first: a label whose words are the query's (EXACT), then labels
that contain the whole query phrase (PHRASE), each group by interpretation score; then the rest
(PARTIAL) by BM25 over the explanations, equal scores by interpretation score. The tokenizer
folds plurals, so "pleural effusions" finds "effusion"; a query word that no label has also
matches the label words nearest to it in spelling (rapidfuzz), weighted by that similarity, so
"pacemakr" finds "pacemaker" (a PARTIAL match). ``suggest`` names the labels nearest to a query
that matched nothing.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields
from enum import IntEnum
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz, process

BM25_K1 = 1.5
BM25_B = 0.75
# A query word unknown to the index matches label words at least this similar (0..100).
FUZZY_CUTOFF = 80.0
FUZZY_ALTERNATIVES = 3
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_STOPWORDS = frozenset(
    {
        *("a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in"),
        *("into", "is", "it", "its", "of", "on", "or", "s", "such", "that", "the", "their"),
        *("then", "there", "these", "this", "to", "was", "were", "which", "with"),
    }
)


@dataclass(frozen=True)
class Provenance:
    """Where an explanation and its score came from (the columns of ``interpretation_file``
    after feature, explanation and score); what a file leaves empty is None."""

    explainer: str | None = None
    explainer_model: str | None = None
    scorer: str | None = None
    n_activating: int | None = None
    n_non_activating: int | None = None
    auroc: float | None = None
    balanced_accuracy: float | None = None
    concept_auroc: float | None = None
    created: str | None = None


_PROVENANCE_TYPES = {field.name: field.type for field in fields(Provenance)}


@dataclass(frozen=True)
class FeatureInterpretation:
    feature: int
    explanation: str | None
    score: float | None
    provenance: Provenance | None = None  # None when the file has no provenance columns


class MatchQuality(IntEnum):
    """How a label matches a query; higher is better."""

    PARTIAL = 1  # some of the query's words, or words spelt nearly so
    PHRASE = 2  # the label contains the whole query phrase
    EXACT = 3  # the label's words are the query's words


@dataclass(frozen=True)
class CatalogueMatch:
    interpretation: FeatureInterpretation
    quality: MatchQuality
    relevance: float  # BM25 of the label for the query


def tokenize(text: str) -> list[str]:
    """Lowercased alphanumeric words without stopwords, plurals folded to the singular."""
    words = _WORD_SPLIT.split(text.lower())
    return [_singular(word) for word in words if word and word not in _STOPWORDS]


def _singular(word: str) -> str:
    """Fold common English plural endings; words ending in -ss, -us, -is stay as they are."""
    if len(word) <= 3 or not word.endswith("s"):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"  # opacities -> opacity
    if word.endswith(("sses", "xes", "ches", "shes", "zes")):
        return word[:-2]  # masses -> mass, boxes -> box
    if word.endswith(("ss", "us", "is")):
        return word  # mass, status, atelectasis
    return word[:-1]  # effusions -> effusion, pacemakers -> pacemaker, lines -> line


class FeatureCatalogue:
    """Interpretations by feature index, with BM25 search over the explanations."""

    def __init__(self, interpretations: Iterable[FeatureInterpretation]) -> None:
        self._by_feature: dict[int, FeatureInterpretation] = {}
        for interpretation in interpretations:
            if interpretation.feature in self._by_feature:
                raise ValueError(f"feature {interpretation.feature} is interpreted twice")
            self._by_feature[interpretation.feature] = interpretation
        self._words = {
            item.feature: tokenize(item.explanation)
            for item in self._by_feature.values()
            if item.explanation
        }
        self._index = _Bm25Index(self._words)

    @classmethod
    def empty(cls) -> FeatureCatalogue:
        return cls(())

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        feature_column: str = "feature",
        explanation_column: str = "explanation",
        score_column: str | None = "score",
    ) -> FeatureCatalogue:
        """Read a ``.csv`` or ``.jsonl`` table; ``score_column=None`` when it has no scores.
        The provenance columns (``Provenance``'s field names) are kept when present.

        Empty explanations and scores are allowed. Raises ``ValueError`` naming the file for a
        missing column, a bad value or a feature listed twice.
        """
        path = Path(path)
        readers = {".csv": _read_csv, ".jsonl": _read_jsonl}
        reader = readers.get(path.suffix.lower())
        if reader is None:
            raise ValueError(f"{path}: unsupported interpretation file type; use .csv or .jsonl")
        try:
            rows, columns = reader(path)
            columns_used = {"feature": feature_column, "explanation": explanation_column}
            if score_column is not None:
                columns_used["score"] = score_column
            missing = [name for name in columns_used.values() if name not in columns]
            if missing:
                raise ValueError(f"missing column(s) {missing}; the file has {sorted(columns)}")
            provenance_columns = [name for name in _PROVENANCE_TYPES if name in columns]
            return cls(
                _interpretation(
                    row,
                    number,
                    feature_column,
                    explanation_column,
                    score_column,
                    provenance_columns,
                )
                for number, row in enumerate(rows, start=1)
            )
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from error

    def get(self, feature: int) -> FeatureInterpretation | None:
        return self._by_feature.get(feature)

    def __len__(self) -> int:
        return len(self._by_feature)

    def features(self) -> list[int]:
        """The interpreted feature indices, ascending."""
        return sorted(self._by_feature)

    def search(self, query: str, limit: int = 10) -> list[CatalogueMatch]:
        """Best-matching interpretations, best first: by match quality; EXACT and PHRASE
        matches then by interpretation score, PARTIAL ones by BM25 and then interpretation
        score; unscored last, then the lower feature index. An empty or stopword-only query
        finds nothing."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        words = tokenize(query)
        matches = [
            CatalogueMatch(self._by_feature[feature], self._quality(feature, words), relevance)
            for feature, relevance in self._index.rank(self._index.expand(words))
        ]
        matches.sort(
            key=lambda match: (
                -match.quality,
                0.0 if match.quality > MatchQuality.PARTIAL else -round(match.relevance, 9),
                -self._score_of(match.interpretation.feature),
                match.interpretation.feature,
            )
        )
        return matches[:limit]

    def _quality(self, feature: int, query_words: list[str]) -> MatchQuality:
        label_words = self._words[feature]
        if label_words == query_words:
            return MatchQuality.EXACT
        width = len(query_words)
        if any(
            label_words[start : start + width] == query_words
            for start in range(len(label_words) - width + 1)
        ):
            return MatchQuality.PHRASE
        return MatchQuality.PARTIAL

    def suggest(self, query: str, limit: int = 3) -> list[str]:
        """The labels nearest to ``query`` in spelling, best first (for a search that found
        nothing)."""
        labels = {item.explanation for item in self._by_feature.values() if item.explanation}
        matches = process.extract(query, sorted(labels), scorer=fuzz.WRatio, limit=limit)
        return [label for label, _, _ in matches]

    def _score_of(self, feature: int) -> float:
        score = self._by_feature[feature].score
        return -math.inf if score is None else score


class _Bm25Index:
    """Okapi BM25 over small documents, with the always-positive idf of Lucene."""

    def __init__(self, documents: dict[int, list[str]]) -> None:
        self._postings: dict[str, dict[int, int]] = {}
        self._lengths = {doc: len(terms) for doc, terms in documents.items()}
        for doc, terms in documents.items():
            for term, count in Counter(terms).items():
                self._postings.setdefault(term, {})[doc] = count
        total = sum(self._lengths.values())
        self._average_length = total / len(documents) if documents else 0.0

    def expand(self, query_terms: list[str]) -> dict[str, float]:
        """Query terms with weights: a known term weighs 1; an unknown one is replaced by the
        indexed terms nearest in spelling, each weighted by its similarity."""
        weighted: dict[str, float] = {}
        vocabulary = sorted(self._postings)
        for term in query_terms:
            if term in self._postings:
                weighted[term] = max(weighted.get(term, 0.0), 1.0)
                continue
            near = process.extract(
                term,
                vocabulary,
                scorer=fuzz.ratio,
                score_cutoff=FUZZY_CUTOFF,
                limit=FUZZY_ALTERNATIVES,
            )
            for word, similarity, _ in near:
                weighted[word] = max(weighted.get(word, 0.0), similarity / 100)
        return weighted

    def rank(self, query_terms: dict[str, float]) -> list[tuple[int, float]]:
        scores: dict[int, float] = {}
        for term, weight in query_terms.items():
            postings = self._postings.get(term, {})
            idf = self._idf(len(postings))
            for doc, count in postings.items():
                score = weight * idf * self._saturation(count, doc)
                scores[doc] = scores.get(doc, 0.0) + score
        return sorted(scores.items(), key=lambda item: (-item[1], item[0]))

    def _idf(self, document_frequency: int) -> float:
        documents = len(self._lengths)
        return math.log(1 + (documents - document_frequency + 0.5) / (document_frequency + 0.5))

    def _saturation(self, count: int, doc: int) -> float:
        length_ratio = self._lengths[doc] / self._average_length
        return count * (BM25_K1 + 1) / (count + BM25_K1 * (1 - BM25_B + BM25_B * length_ratio))


def _read_csv(path: Path) -> tuple[list[dict[str, Any]], set[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return rows, set(reader.fieldnames or ())


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """Rows of a JSON Lines file; a column exists if any row has it (rows may omit nulls)."""
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"line {number} is not JSON: {error}") from error
            if not isinstance(row, dict):
                raise ValueError(f"line {number} is not a JSON object")
            rows.append(row)
    return rows, {key for row in rows for key in row}


def _interpretation(
    row: dict[str, Any],
    number: int,
    feature_column: str,
    explanation_column: str,
    score_column: str | None,
    provenance_columns: list[str],
) -> FeatureInterpretation:
    feature = _parse_feature(row.get(feature_column), number)
    explanation = row.get(explanation_column)
    explanation = str(explanation).strip() if explanation is not None else ""
    score = _parse_score(row.get(score_column), number) if score_column else None
    provenance = (
        Provenance(
            **{name: _parse_provenance(row.get(name), name, number) for name in provenance_columns}
        )
        if provenance_columns
        else None
    )
    return FeatureInterpretation(
        feature=feature, explanation=explanation or None, score=score, provenance=provenance
    )


def _parse_provenance(value: object, name: str, number: int) -> object:
    """A provenance cell as its field's type; empty is None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    kind = _PROVENANCE_TYPES[name]
    if kind == "float | None":
        return _parse_score(value, number, name)
    if kind == "int | None":
        return _parse_count(value, number, name)
    return str(value).strip()


def _parse_feature(value: object, number: int) -> int:
    return _parse_count(value, number, "feature index")


def _parse_count(value: object, number: int, name: str) -> int:
    try:
        count = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ValueError(f"row {number}: {name} {value!r} is not an integer") from None
    if isinstance(value, bool) or count < 0:
        raise ValueError(f"row {number}: {name} {value!r} is not an integer >= 0")
    return count


def _parse_score(value: object, number: int, name: str = "score") -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"row {number}: {name} {value!r} is not a number") from None
    if not math.isfinite(score):
        raise ValueError(f"row {number}: {name} {value!r} is not finite")
    return score
