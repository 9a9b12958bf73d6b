"""Examples per feature, Delphi-style: what an explainer is shown and what a scorer holds out.

    collect_activations(model, processor, sae, layer, studies, features=None, *,
                        task=None, batch_size=4, progress=False) -> StudyActivations
    ExampleSource(activations, settings=ExampleSettings())
        .features() -> list[int]             the features that fire in some study
        .for_feature(feature) -> FeatureExamples

``collect_activations`` runs every study as the server runs it (processor, block-output
capture at the SAE's layer, threshold encode) over the tokens a dashboard counts (image
patches, prompt text, the teacher-forced report), one batch at a time, and keeps per study and
feature only the peak activation and where it is: memory is studies x features, whatever the
model. ``studies`` are ``DashboardStudy`` values, as ``build-dashboard`` reads them (a study
folder reads as such with ``dashboard_cli.FolderStudies``).

One example per study and feature, at the study's peak token for it: a text token shows its
context with the token marked ``<<so>>``; an image patch shows the study's text (indication,
technique, comparison, findings) and where on which film it fires. Studies are split by a
seeded hash of their id into explain and held-out studies, so the two sets never share a
study and a feature range run in another process splits the same way:

- ``explain``: the top activations of the explain studies, then samples from the activation
  quantiles of the rest; ``contrast``: non-activating explain studies (random and
  similar-looking), for contrastive explainers;
- ``activating``: held-out samples from every activation quantile, the top one included;
- ``non_activating``: held-out studies where the feature never fires, half at random, half
  similar-looking: for a feature that peaks on text, studies holding the token it peaks on;
  for one that peaks on the films, the studies whose text is closest to the activating ones'.

A feature that fires in nearly every study has no silent one: for it, a study at or below its
median peak counts as not activating (``ExampleSource.floor``), and such an example's
``activation`` is its study's peak (not 0).

The films with the feature's heat map (``Example.heat_map_png``) are attached from a
dashboard built with content by ``films.with_dashboard_films``.

Studies hold patient data: the examples carry their text, so treat them as the studies.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from maira_sae.sae.model import MatryoshkaSAE
from maira_sae.server.engine.capture import capture_batch
from maira_sae.server.engine.types import DEFAULT_TOKEN_KINDS
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor
from maira_sae.server.maira2.study import Study, Task
from maira_sae.server.maira2.tokens import TokenKind
from maira_sae.server.training.dashboards import DashboardStudy
from maira_sae.server.training.explain.phrases import phrases_of
from maira_sae.server.training.explain.protocols import Example, ExampleKind, FeatureExamples

_TEXT_KINDS = (TokenKind.PROMPT_TEXT, TokenKind.RESPONSE)
_SECTIONS = (("Indication", "indication"), ("Technique", "technique"), ("Comparison", "comparison"))


@dataclass(frozen=True)
class ExampleSettings:
    top: int = 20  # explain: the top activations
    quantiles: int = 5  # activation quantile bins
    explain_per_quantile: int = 4  # explain: samples from each bin below the top
    held_out_per_quantile: int = 5  # held out: activating samples from each bin
    contrast: int = 40  # explain: non-activating examples for contrast
    non_activating: int = 24  # held out: non-activating, half random, half similar-looking
    similar_pool: int = 500  # similar-looking ones are the closest of this many drawn at random
    held_out_fraction: float = 0.5  # of the studies
    context: int = 10  # text tokens each side of a text example
    # A feature that fires in more than this share of the studies (on every film, say, with a
    # peak that grows with a finding) has no silent study: below its median peak counts as not
    # activating (``ExampleSource.floor``).
    dense_share: float = 0.9
    seed: int = 0


@dataclass(frozen=True)
class StudyRecord:
    study_id: str
    text: str  # the study's sections and findings
    text_ids: tuple[int, ...]  # its prompt and report tokens, in order
    pieces: tuple[str, ...]  # each as text


@dataclass(frozen=True)
class StudyActivations:
    """Per study (rows) and feature (columns of ``features``): the peak activation and its
    token. ``text_index`` >= 0 is a text token (an index into the study's ``text_ids``),
    otherwise the token is the image patch ``image``, ``row``, ``col``."""

    studies: tuple[StudyRecord, ...]
    features: tuple[int, ...]
    peak: np.ndarray  # float32 [S, F]
    text_index: np.ndarray  # int32 [S, F]
    image: np.ndarray  # int16 [S, F]
    row: np.ndarray  # int16 [S, F]
    col: np.ndarray  # int16 [S, F]


@torch.no_grad()
def collect_activations(
    model: Maira2ForConditionalGeneration,
    processor: Maira2Processor,
    sae: MatryoshkaSAE,
    layer: int,
    studies: Sequence[DashboardStudy],
    features: Sequence[int] | None = None,
    *,
    task: Task | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> StudyActivations:
    """Each study's peak activation of each of ``features`` (default: all) and its token."""
    if not studies:
        raise ValueError("no studies to collect examples from")
    task = task or Task()
    chosen = tuple(range(sae.d_sae)) if features is None else tuple(features)
    if not chosen:
        raise ValueError("no features to collect examples of")
    if any(not 0 <= f < sae.d_sae for f in chosen):
        raise ValueError(f"features must lie in [0, {sae.d_sae}), got {chosen[0]}..{chosen[-1]}")
    columns = torch.tensor(chosen, dtype=torch.long)
    records: list[StudyRecord] = []
    parts: dict[str, list[np.ndarray]] = {n: [] for n in ("peak", "text", "image", "row", "col")}
    for start in range(0, len(studies), batch_size):
        read = [studies[i] for i in range(start, min(start + batch_size, len(studies)))]
        inputs = [processor.process(s.study, task, s.report) for s in read]
        residuals = capture_batch(model, inputs, {layer}, pad_token_id=processor.pad_token_id)
        for study, study_inputs, by_layer in zip(read, inputs, residuals, strict=True):
            kept = [t for t in study_inputs.tokens if t.kind in DEFAULT_TOKEN_KINDS]
            rows = torch.tensor([t.position for t in kept], dtype=torch.long)
            codes = sae.encode(by_layer[layer][rows]).float().cpu()[:, columns]
            peak, where = codes.max(dim=0)
            text_tokens = [t for t in kept if t.kind in _TEXT_KINDS]
            text_at = {t.position: i for i, t in enumerate(text_tokens)}
            meta = np.array(
                [
                    (
                        text_at.get(t.position, -1),
                        -1 if t.image_index is None else t.image_index,
                        -1 if t.grid_row is None else t.grid_row,
                        -1 if t.grid_col is None else t.grid_col,
                    )
                    for t in kept
                ],
                dtype=np.int32,
            )[where.numpy()]
            parts["peak"].append(peak.clamp(min=0).numpy().astype(np.float32))
            for index, name in enumerate(("text", "image", "row", "col")):
                parts[name].append(meta[:, index])
            records.append(
                StudyRecord(
                    study.study_id,
                    study_text(study.study, study.report),
                    tuple(t.token_id for t in text_tokens),
                    tuple(processor.token_text(t.token_id) for t in text_tokens),
                )
            )
        if progress:
            print(f"examples: {len(records)}/{len(studies)} studies", file=sys.stderr)
    stack = {name: np.stack(values) for name, values in parts.items()}
    return StudyActivations(
        studies=tuple(records),
        features=chosen,
        peak=stack["peak"],
        text_index=stack["text"].astype(np.int32),
        image=stack["image"].astype(np.int16),
        row=stack["row"].astype(np.int16),
        col=stack["col"].astype(np.int16),
    )


def study_text(study: Study, findings: str | None) -> str:
    """What an image example shows of its study: its sections and findings, one a line."""
    lines = [
        f"{label}: {getattr(study, name)}" for label, name in _SECTIONS if getattr(study, name)
    ]
    if findings:
        lines.append(f"Findings: {findings}")
    return "\n".join(lines)


class ExampleSource:
    """The examples of every feature of ``activations`` (see the module docstring)."""

    def __init__(
        self, activations: StudyActivations, settings: ExampleSettings = ExampleSettings()
    ) -> None:
        self.activations = activations
        self.settings = settings
        self._column = {feature: j for j, feature in enumerate(activations.features)}
        self._held_out = np.array(
            [_held_out(s.study_id, settings) for s in activations.studies], dtype=bool
        )
        # Each study's phrases and text tokens, when first needed.
        self._words: list[Counter[str]] | None = None
        self._token_sets: list[frozenset[int]] | None = None

    def features(self) -> list[int]:
        """The features that fire in at least one study."""
        live = (self.activations.peak > 0).any(axis=0)
        return [f for f, fires in zip(self.activations.features, live, strict=True) if fires]

    def floor(self, feature: int) -> float:
        """The study peak at or below which a study counts as not activating the feature: 0,
        but the median study peak for a feature that fires in nearly every study."""
        peak = self.activations.peak[:, self._column[feature]]
        if (peak > 0).mean() <= self.settings.dense_share:
            return 0.0
        return float(np.median(peak))

    def for_feature(self, feature: int) -> FeatureExamples:
        if feature not in self._column:
            raise KeyError(f"feature {feature} was not collected")
        j = self._column[feature]
        settings = self.settings
        peak = self.activations.peak[:, j]
        rng = np.random.default_rng([settings.seed, feature])
        fires = peak > self.floor(feature)
        explain_act = _by_peak(np.flatnonzero(fires & ~self._held_out), peak)
        held_act = _by_peak(np.flatnonzero(fires & self._held_out), peak)
        top, rest = explain_act[: settings.top], explain_act[settings.top :]
        explain = [self._example(s, j, None) for s in top] + [
            self._example(s, j, q)
            for q, s in _quantile_samples(rest, settings.explain_per_quantile, settings, rng)
        ]
        activating = [
            self._example(s, j, q)
            for q, s in _quantile_samples(held_act, settings.held_out_per_quantile, settings, rng)
        ]
        contrast = self._non_activating(
            np.flatnonzero(~fires & ~self._held_out), explain_act, j, settings.contrast, 0, rng
        )
        held_out = np.flatnonzero(~fires & self._held_out)
        count = settings.non_activating
        non_activating = self._non_activating(held_out, held_act, j, count, count // 2, rng)
        return FeatureExamples(
            feature, tuple(explain), tuple(activating), tuple(non_activating), tuple(contrast)
        )

    def _example(self, study: int, j: int, quantile: int | None) -> Example:
        a = self.activations
        record = a.studies[study]
        value = float(a.peak[study, j])
        text_index = int(a.text_index[study, j])
        if text_index >= 0:
            return self._text_example(study, text_index, value, quantile)
        return Example(
            study_id=record.study_id,
            kind=ExampleKind.IMAGE,
            activation=value,
            text=record.text,
            image=int(a.image[study, j]),
            row=int(a.row[study, j]),
            column=int(a.col[study, j]),
            quantile=quantile,
        )

    def _text_example(
        self, study: int, index: int, value: float, quantile: int | None = None
    ) -> Example:
        record = self.activations.studies[study]
        width = self.settings.context
        pieces = record.pieces
        token = pieces[index]
        left = "".join(pieces[max(index - width, 0) : index])
        right = "".join(pieces[index + 1 : index + 1 + width])
        spaced = " " if token.startswith(" ") else ""
        return Example(
            study_id=record.study_id,
            kind=ExampleKind.TEXT,
            activation=value,
            text=f"{left}{spaced}<<{token.strip()}>>{right}".strip(),
            token=token.strip(),
            quantile=quantile,
        )

    def _non_activating(
        self,
        candidates: np.ndarray,
        activating: np.ndarray,
        j: int,
        count: int,
        similar_count: int,
        rng: np.random.Generator,
    ) -> list[Example]:
        """``count`` examples from ``candidates`` (studies that do not activate the feature):
        the ``similar_count`` most similar-looking to ``activating``, the rest at random."""
        if len(candidates) == 0 or count == 0:
            return []
        a = self.activations
        reference = activating[: self.settings.top]
        text_ids = {
            a.studies[s].text_ids[a.text_index[s, j]] for s in reference if a.text_index[s, j] >= 0
        }
        on_text = 2 * int((a.text_index[reference, j] >= 0).sum()) > len(reference)
        pool = candidates
        if similar_count and len(candidates) > self.settings.similar_pool:
            pool = rng.choice(candidates, self.settings.similar_pool, replace=False)
        similar = self._holding(pool, text_ids) if on_text else self._closest(pool, reference)
        similar = similar[:similar_count]
        drawn = rng.permutation(np.setdiff1d(candidates, similar))[: count - len(similar)]
        if on_text:
            return [self._text_token(s, j, text_ids, rng) for s in similar] + [
                self._text_token(s, j, set(), rng) for s in drawn
            ]
        where = reference[0] if len(reference) else None
        return [self._image_at(s, where, j) for s in (*similar, *drawn)]

    def _holding(self, candidates: np.ndarray, text_ids: set[int]) -> np.ndarray:
        """The candidates that hold one of ``text_ids``."""
        if self._token_sets is None:
            self._token_sets = [frozenset(s.text_ids) for s in self.activations.studies]
        sets = self._token_sets
        return np.array([s for s in candidates if not text_ids.isdisjoint(sets[s])], dtype=np.int64)

    def _closest(self, candidates: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """The candidates by the cosine of their phrase counts with the reference's pooled."""
        if len(reference) == 0:
            return np.array([], dtype=np.int64)
        words = self._study_words()
        pooled: Counter[str] = Counter()
        for s in reference:
            pooled.update(words[s])
        norm = math.sqrt(sum(v * v for v in pooled.values()))

        def cosine(s: int) -> float:
            own = words[s]
            dot = sum(pooled[k] * v for k, v in own.items())
            return dot / (norm * math.sqrt(sum(v * v for v in own.values())) or 1.0)

        return np.array(sorted(candidates.tolist(), key=lambda s: -cosine(s)), dtype=np.int64)

    def _text_token(
        self, study: int, j: int, text_ids: set[int], rng: np.random.Generator
    ) -> Example:
        """A text token of ``study``: one of ``text_ids`` when it holds one, else at random
        (its activation is given as the study's peak: 0, or at most the feature's floor)."""
        ids = self.activations.studies[study].text_ids
        same = [i for i, token in enumerate(ids) if token in text_ids]
        index = same[0] if same else int(rng.integers(len(ids)))
        return self._text_example(study, index, float(self.activations.peak[study, j]))

    def _image_at(self, study: int, where: int | None, j: int) -> Example:
        """``study`` at the patch where the feature's top example fires (its activation given
        as the study's peak: 0, or at most the feature's floor)."""
        a = self.activations
        return Example(
            study_id=a.studies[study].study_id,
            kind=ExampleKind.IMAGE,
            activation=float(a.peak[study, j]),
            text=a.studies[study].text,
            image=None if where is None else int(a.image[where, j]),
            row=None if where is None else int(a.row[where, j]),
            column=None if where is None else int(a.col[where, j]),
        )

    def _study_words(self) -> list[Counter[str]]:
        if self._words is None:
            self._words = [Counter(phrases_of(s.text).keys()) for s in self.activations.studies]
        return self._words


def _held_out(study_id: str, settings: ExampleSettings) -> bool:
    digest = hashlib.sha256(f"{settings.seed}:{study_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < settings.held_out_fraction


def _by_peak(studies: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """``studies`` by their peak, highest first (ties by index)."""
    return studies[np.lexsort((studies, -peak[studies]))]


def _quantile_samples(
    ranked: np.ndarray, per_bin: int, settings: ExampleSettings, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(bin, study) samples: ``ranked`` (highest first) cut into equal-count bins, bin 0 the
    lowest, ``per_bin`` drawn from each."""
    bins = np.array_split(ranked[::-1], settings.quantiles)
    return [
        (q, int(s))
        for q, members in enumerate(bins)
        for s in sorted(rng.permutation(members)[:per_bin].tolist())
    ]
