"""Harvest one layer's residual stream over many studies, for SAE training and interpretation.

The activations come from ``capture_batch``, the code Encode runs, so a harvested token is
exactly what the server would encode for it. Each study is prepared by the real processor and,
when a report is given, teacher-forced with it (its tokens are RESPONSE tokens).

The paper trained and interpreted its SAEs "after removing intermediate image tokens and prompt
boilerplate"; its exact rule is not published. ``HarvestFilter`` offers, each off by default:

- ``image_patch_stride`` s: keep only the image patches on every s-th row and column of each
  image's patch grid (a regular sub-grid, 1/s^2 of the patches); 1 keeps all. Image patches can
  also be dropped entirely by leaving IMAGE_PATCH out of ``kinds``.
- ``drop_boilerplate``: drop PROMPT_TEXT tokens that also appear, aligned in order, in the prompt
  of the same images and task with every section blank (difflib over token ids). That removes
  the fixed instruction and the section headers and keeps the study's own indication, technique,
  comparison and prior-report words; a missing section's "N/A" is boilerplate too.

SPECIAL tokens (``<s>``, ``</s>``) are left out by default, as Encode's default filter does: the
first token's residual is huge and would dominate a reconstruction loss.
"""

from __future__ import annotations

import difflib
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from maira_sae.server.engine.capture import capture_batch
from maira_sae.server.engine.types import DEFAULT_TOKEN_KINDS
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor, ModelInputs
from maira_sae.server.maira2.study import Study, Task
from maira_sae.server.maira2.tokens import TokenInfo, TokenKind

KIND_CODES: tuple[TokenKind, ...] = tuple(TokenKind)  # HarvestedTokens.kinds[i] indexes this


@dataclass(frozen=True)
class HarvestFilter:
    """Which tokens of each study are kept; see the module docstring."""

    kinds: frozenset[TokenKind] = DEFAULT_TOKEN_KINDS
    image_patch_stride: int = 1
    drop_boilerplate: bool = False

    def __post_init__(self) -> None:
        if self.image_patch_stride < 1:
            raise ValueError(f"image_patch_stride must be >= 1, got {self.image_patch_stride}")


@dataclass(frozen=True)
class HarvestedTokens:
    """One row per kept token: its activation and where it came from."""

    activations: torch.Tensor  # [N, d_model], on the CPU
    study_index: torch.Tensor  # int64 [N]: index into the harvested studies
    position: torch.Tensor  # int64 [N]: the token's position in its study's sequence
    kinds: torch.Tensor  # int8 [N]: index into KIND_CODES
    token_ids: torch.Tensor  # int64 [N]
    num_studies: int

    def __len__(self) -> int:
        return int(self.activations.shape[0])

    def of_kind(self, kind: TokenKind) -> torch.Tensor:
        """Bool mask [N] of the tokens of ``kind`` (``kinds`` holds codes, not kinds)."""
        return self.kinds == KIND_CODES.index(kind)


def harvest_activations(
    model: Maira2ForConditionalGeneration,
    processor: Maira2Processor,
    studies: Sequence[Study],
    layer: int,
    *,
    reports: Sequence[str | None] | None = None,
    task: Task | None = None,
    token_filter: HarvestFilter | None = None,
    batch_size: int = 4,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> HarvestedTokens:
    """Block ``layer``'s output for the kept tokens of every study, ``batch_size`` studies per
    forward (right-padded, so a study's activations do not depend on its batch)."""
    if reports is not None and len(reports) != len(studies):
        raise ValueError(f"{len(reports)} reports for {len(studies)} studies")
    pairs = zip(studies, reports if reports is not None else [None] * len(studies), strict=True)
    harvested = iter_harvest(
        model, processor, pairs, layer, task=task, token_filter=token_filter, batch_size=batch_size
    )
    parts = []
    for index, part in enumerate(harvested):
        parts.append((index, part))
        if progress and ((index + 1) % batch_size == 0 or index + 1 == len(studies)):
            print(f"harvested {index + 1}/{len(studies)} studies", file=sys.stderr)
    return _assemble(parts, len(studies), model.hidden_size, dtype)


@dataclass(frozen=True)
class HarvestedStudy:
    """One study's kept tokens and their activations [len(tokens), d_model] (model dtype)."""

    tokens: list[TokenInfo]
    activations: torch.Tensor


def iter_harvest(
    model: Maira2ForConditionalGeneration,
    processor: Maira2Processor,
    studies: Iterable[tuple[Study, str | None]],
    layer: int,
    *,
    task: Task | None = None,
    token_filter: HarvestFilter | None = None,
    batch_size: int = 4,
) -> Iterator[HarvestedStudy]:
    """The kept tokens of each (study, report) in order, ``batch_size`` studies per forward;
    the studies are read from ``studies`` only as each batch needs them."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    task = task or Task()
    token_filter = token_filter or HarvestFilter()
    boilerplate = _BoilerplateDetector(processor, task) if token_filter.drop_boilerplate else None
    pending = iter(studies)
    while batch := list(itertools.islice(pending, batch_size)):
        inputs = [processor.process(study, task, report) for study, report in batch]
        residuals = capture_batch(model, inputs, {layer}, pad_token_id=processor.pad_token_id)
        for (study, _), study_inputs, by_layer in zip(batch, inputs, residuals, strict=True):
            boiler = boilerplate.positions(study, study_inputs) if boilerplate else set()
            kept = [token for token in study_inputs.tokens if _keep(token, token_filter, boiler)]
            yield HarvestedStudy(kept, by_layer[layer][[t.position for t in kept]])


def token_columns(study_index: int, tokens: Sequence[TokenInfo]) -> dict[str, torch.Tensor]:
    """Where each harvested token came from, as int64 columns (``HarvestedTokens``' fields)."""
    return {
        "study_index": torch.full((len(tokens),), study_index, dtype=torch.long),
        "position": torch.tensor([token.position for token in tokens], dtype=torch.long),
        "kinds": torch.tensor([KIND_CODES.index(t.kind) for t in tokens], dtype=torch.long),
        "token_ids": torch.tensor([token.token_id for token in tokens], dtype=torch.long),
    }


def _keep(token: TokenInfo, token_filter: HarvestFilter, boilerplate: set[int]) -> bool:
    if token.kind not in token_filter.kinds:
        return False
    if token.kind is TokenKind.IMAGE_PATCH:
        stride = token_filter.image_patch_stride
        assert token.grid_row is not None and token.grid_col is not None
        return token.grid_row % stride == 0 and token.grid_col % stride == 0
    return token.position not in boilerplate


def _assemble(
    parts: list[tuple[int, HarvestedStudy]], num_studies: int, d_model: int, dtype: torch.dtype
) -> HarvestedTokens:
    columns = [token_columns(index, part.tokens) for index, part in parts]
    activations = [part.activations.to(device="cpu", dtype=dtype) for _, part in parts]

    def joined(name: str, column_dtype: torch.dtype) -> torch.Tensor:
        values = [column[name] for column in columns]
        return torch.cat(values).to(column_dtype) if values else torch.zeros(0, dtype=column_dtype)

    return HarvestedTokens(
        activations=torch.cat(activations) if activations else torch.zeros(0, d_model, dtype=dtype),
        study_index=joined("study_index", torch.long),
        position=joined("position", torch.long),
        kinds=joined("kinds", torch.int8),
        token_ids=joined("token_ids", torch.long),
        num_studies=num_studies,
    )


class _BoilerplateDetector:
    """Positions of a study's prompt text that its blank-section twin shares (see module doc).

    The twin prompt depends only on which images are present, so it is built once per image
    set; a response never takes part (PROMPT_TEXT tokens only)."""

    def __init__(self, processor: Maira2Processor, task: Task) -> None:
        self._processor = processor
        self._task = task
        self._templates: dict[tuple[bool, bool], list[int]] = {}

    def positions(self, study: Study, inputs: ModelInputs) -> set[int]:
        prompt_text = [t for t in inputs.tokens if t.kind is TokenKind.PROMPT_TEXT]
        template = self._template_ids(study)
        matcher = difflib.SequenceMatcher(
            None, [t.token_id for t in prompt_text], template, autojunk=False
        )
        return {
            prompt_text[block.a + offset].position
            for block in matcher.get_matching_blocks()
            for offset in range(block.size)
        }

    def _template_ids(self, study: Study) -> list[int]:
        key = (study.lateral is not None, study.prior is not None)
        if key not in self._templates:
            blank = replace(
                study, indication=None, technique=None, comparison=None, prior_report=None
            )
            tokens = self._processor.process(blank, self._task).tokens
            self._templates[key] = [t.token_id for t in tokens if t.kind is TokenKind.PROMPT_TEXT]
        return self._templates[key]
