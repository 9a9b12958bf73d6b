"""Where each variant's interventions apply: position scopes turned into boolean masks.

A generation runs every variant as one row of a batch. The plan flattens all interventions of
all rows into one list; each gets a mask ``[batch, tokens]`` that is true only on its own row and
on the positions its scope selects, for whichever chunk of positions the forward pass covers
(the whole prompt at prefill, one position per decode step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from maira_sae.sae.interventions import Intervention
from maira_sae.sae.model import MatryoshkaSAE
from maira_sae.sae.steering import SteeringEdit
from maira_sae.server.engine.token_ranges import RangeSet
from maira_sae.server.engine.types import PositionScope, ScopedIntervention, Variant
from maira_sae.server.maira2.tokens import TokenInfo, TokenKind


@dataclass(frozen=True)
class _RowIntervention:
    row: int
    scoped: ScopedIntervention
    ranges: RangeSet  # scoped.ranges, merged once for every chunk's test


class SteeringPlan:
    """The interventions of every row and the prompt facts their scopes need."""

    def __init__(self, variants: Sequence[Variant], prompt_tokens: Sequence[TokenInfo]) -> None:
        self._batch = len(variants)
        self._prompt_length = len(prompt_tokens)
        self._prompt_is_image = torch.tensor(
            [token.kind is TokenKind.IMAGE_PATCH for token in prompt_tokens], dtype=torch.bool
        )
        self._items = tuple(
            _RowIntervention(row, scoped, RangeSet(scoped.ranges))
            for row, variant in enumerate(variants)
            for scoped in variant.interventions
        )

    @property
    def is_empty(self) -> bool:
        return not self._items

    @property
    def interventions(self) -> tuple[Intervention, ...]:
        return tuple(item.scoped.intervention for item in self._items)

    @property
    def prompt_length(self) -> int:
        return self._prompt_length

    def row_interventions(self, row: int) -> tuple[int, ...]:
        """Indices (into ``interventions``) of the interventions of one row, in order."""
        return tuple(index for index, item in enumerate(self._items) if item.row == row)

    def gates_at(self, position: int) -> list[bool]:
        """For one absolute position, whether each intervention applies there."""
        at = torch.tensor([position])
        return [bool(self._positions_in_scope(item, at)[0]) for item in self._items]

    @property
    def touches_prompt(self) -> bool:
        """True when some intervention selects a prompt position: rows then differ from the
        steering layer on during the prefill."""
        positions = torch.arange(self._prompt_length)
        return any(bool(self._positions_in_scope(item, positions).any()) for item in self._items)

    @property
    def same_on_every_generated_position(self) -> bool:
        """True when every scope selects all generated positions or none (no explicit ranges):
        one mask then serves every decode step."""
        return all(item.scoped.scope is not PositionScope.RANGES for item in self._items)

    def masks(self, start: int, length: int, device: torch.device) -> torch.Tensor:
        """Masks ``[n_interventions, batch, length]`` for absolute positions start..start+length."""
        positions = torch.arange(start, start + length)
        masks = torch.zeros(len(self._items), self._batch, length, dtype=torch.bool)
        for index, item in enumerate(self._items):
            masks[index, item.row] = self._positions_in_scope(item, positions)
        return masks.to(device)

    def _positions_in_scope(self, item: _RowIntervention, positions: torch.Tensor) -> torch.Tensor:
        in_prompt = positions < self._prompt_length
        scope = item.scoped.scope
        if scope is PositionScope.ALL:
            return torch.ones_like(positions, dtype=torch.bool)
        if scope is PositionScope.PROMPT:
            return in_prompt
        if scope is PositionScope.GENERATED:
            return ~in_prompt
        is_image = torch.zeros_like(positions, dtype=torch.bool)
        is_image[in_prompt] = self._prompt_is_image[positions[in_prompt]]
        if scope is PositionScope.IMAGE:
            return is_image
        if scope is PositionScope.TEXT:
            return ~is_image
        return item.ranges.contains(positions)


class ChunkSteerer:
    """The residual edit for one forward chunk: call ``set_chunk`` before each forward.

    The interventions are validated and their directions built once, on the first chunk; a
    decode step (one generated position) reuses one mask on the device when the plan allows,
    so the steady decode loop builds nothing and copies nothing to the device.
    """

    def __init__(self, plan: SteeringPlan, sae: MatryoshkaSAE | None) -> None:
        self._plan = plan
        self._sae = sae
        self._start = 0
        self._rows: torch.Tensor | None = None  # the plan's rows in the hidden states; None: all
        self._edit: SteeringEdit | None = None
        self._decode_masks: torch.Tensor | None = None

    @property
    def plan(self) -> SteeringPlan:
        return self._plan

    @property
    def sae(self) -> MatryoshkaSAE | None:
        return self._sae

    def set_chunk(self, start: int) -> None:
        self._start = start

    def set_rows(self, rows: list[int]) -> None:
        """The plan's rows the next hidden states hold, in order (rows that ended are gone)."""
        self._rows = torch.tensor(rows, dtype=torch.long)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._edit is None:
            self._edit = SteeringEdit(
                self._plan.interventions, self._sae, hidden.shape[-1], hidden.device
            )
        masks = self._masks(hidden.shape[1], hidden.device)
        if self._rows is not None and len(self._rows) != masks.shape[1]:
            masks = masks[:, self._rows.to(masks.device)]
        return self._edit.apply(hidden, masks)

    def _masks(self, length: int, device: torch.device) -> torch.Tensor:
        plan = self._plan
        decode_step = length == 1 and self._start >= plan.prompt_length
        if not (decode_step and plan.same_on_every_generated_position):
            return plan.masks(self._start, length, device)
        if self._decode_masks is None:
            self._decode_masks = plan.masks(self._start, 1, device)
        return self._decode_masks
