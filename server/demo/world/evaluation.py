"""How well a model's reports name the concepts of the studies: greedy reports and concept F1."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from maira_sae.server.demo.world.reports import CONCEPTS, concepts_in_text
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor
from maira_sae.server.maira2.study import Study, Task

MAX_REPORT_TOKENS = 96  # the longest world report is about 70 tokens


@dataclass(frozen=True)
class ConceptScores:
    """Counts per concept over a set of reports: true positives, false positives, false
    negatives. Micro F1 pools the counts of all concepts."""

    counts: dict[str, tuple[int, int, int]]

    def f1(self, concept: str) -> float:
        return _f1(*self.counts[concept])

    @property
    def micro_f1(self) -> float:
        return _f1(*(sum(column) for column in zip(*self.counts.values(), strict=True)))

    def describe(self) -> str:
        return ", ".join(f"{concept} {self.f1(concept):.2f}" for concept in self.counts)


def score_reports(reports: Sequence[str], truths: Iterable[frozenset[str]]) -> ConceptScores:
    """Concept-level scores of ``reports`` against the studies' known concepts."""
    counts = dict.fromkeys(CONCEPTS, (0, 0, 0))
    for report, truth in zip(reports, truths, strict=True):
        said = concepts_in_text(report)
        for concept in CONCEPTS:
            tp, fp, fn = counts[concept]
            counts[concept] = (
                tp + (concept in said and concept in truth),
                fp + (concept in said and concept not in truth),
                fn + (concept not in said and concept in truth),
            )
    return ConceptScores(counts)


@torch.no_grad()
def greedy_reports(
    model: Maira2ForConditionalGeneration,
    processor: Maira2Processor,
    studies: Sequence[Study],
    *,
    batch_size: int = 16,
) -> list[str]:
    """Greedy findings for each study, generated in left-padded batches."""
    reports: list[str] = []
    for start in range(0, len(studies), batch_size):
        batch = [processor.process(study, Task()) for study in studies[start : start + batch_size]]
        length = max(len(inputs.input_ids) for inputs in batch)
        input_ids = torch.full((len(batch), length), processor.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, inputs in enumerate(batch):
            input_ids[row, length - len(inputs.input_ids) :] = inputs.input_ids
            attention_mask[row, length - len(inputs.input_ids) :] = 1
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=torch.cat([inputs.pixel_values for inputs in batch]),
            max_new_tokens=MAX_REPORT_TOKENS,
            do_sample=False,
            eos_token_id=processor.eos_token_id,
            pad_token_id=processor.pad_token_id,
        )
        for row in generated[:, length:].tolist():
            tokens = (
                row[: row.index(processor.eos_token_id)] if processor.eos_token_id in row else row
            )
            reports.append(processor.decode_generated(tokens))
    return reports


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0
