"""The decode batch on transformers' own KV cache, grown as calls join and cut as rows leave.

The rows share one cache of transformers' own layout, left-padded: a row's positions are
right-aligned at the end of the cache, an attention mask hides the padding, and every row
gets its own position ids, so rows of different prompt lengths and start times sit in one
forward. A call's rows are contiguous, in the order the calls joined. Columns that no row
needs any more are cut from the left. Each call steers only its own rows, at its own SAE's
layer and at its own position.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from maira_sae.server.engine.decode_batch import DecodeBatch
from maira_sae.server.engine.generation import GenerationCall, Prefilled
from maira_sae.server.engine.hooks import edit_residuals


class DynamicDecodeBatch(DecodeBatch):
    _cache: Any

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self._mask: torch.Tensor | None = None  # long [rows, cached positions]

    @property
    def cached_positions(self) -> int:
        return 0 if self._mask is None else int(self._mask.shape[1])

    def reset(self) -> DynamicDecodeBatch:
        self._members, self._cache, self._mask = [], None, None
        return self

    def join(self, call: GenerationCall, prefilled: Prefilled) -> None:
        mask = torch.ones(
            (len(call.active), prefilled.length), dtype=torch.long, device=self._model.device
        )
        if self._cache is None:
            self._cache, self._mask = prefilled.cache, mask
        else:
            assert self._mask is not None
            width = max(self.cached_positions, prefilled.length)
            _pad_left(self._cache, width - self.cached_positions)
            _pad_left(prefilled.cache, width - prefilled.length)
            for ours, theirs in zip(self._cache.layers, prefilled.cache.layers, strict=True):
                ours.keys = torch.cat([ours.keys, theirs.keys])
                ours.values = torch.cat([ours.values, theirs.values])
            self._mask = torch.cat([_pad_mask(self._mask, width), _pad_mask(mask, width)], dim=0)
        first = self.rows
        self._add(call, list(range(first, first + len(call.active))), prefilled)

    def _free(self, rows: list[int]) -> None:
        """Keep the members' rows of the cache (renumbered in order), then cut the columns
        no kept row uses."""
        if self._mask is None or not rows:
            return
        keep = [row for member in self._members for row in member.rows]
        next_row = 0
        for member in self._members:
            member.rows = list(range(next_row, next_row + len(member.rows)))
            next_row += len(member.rows)
        if not keep:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        used = self._mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first > 0:
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]
            self._mask = self._mask[:, first:]

    def _forward(self) -> torch.Tensor:
        assert self._mask is not None
        device = self._model.device
        calls = self.calls
        tokens = torch.cat([call.next_tokens for call in calls]).to(device)  # type: ignore[misc]
        positions = torch.tensor(
            [call.position for call in calls for _ in call.active], device=device
        )
        self._mask = torch.cat(
            [self._mask, torch.ones((len(tokens), 1), dtype=torch.long, device=device)], dim=1
        )
        with torch.inference_mode(), self._steering():
            return self._decode(tokens, positions, self._mask)

    @contextmanager
    def _steering(self) -> Iterator[None]:
        """One edit per SAE layer that applies each call's steerer to that call's rows."""
        slices: dict[int, list[tuple[slice, Any]]] = {}
        for member in self._members:
            call = member.call
            steerer = call.steerer
            if steerer is not None:
                steerer.set_chunk(call.position)
                rows = slice(member.rows[0], member.rows[-1] + 1)
                slices.setdefault(call.steer_layer, []).append((rows, steerer))

        def edit_for(parts: list[tuple[slice, Any]]) -> Any:
            def edit(hidden: torch.Tensor) -> torch.Tensor:
                edited = hidden.clone()
                for rows, steerer in parts:
                    edited[rows] = steerer(hidden[rows])
                return edited

            return edit

        with edit_residuals(
            self._model.decoder_layers, {layer: edit_for(parts) for layer, parts in slices.items()}
        ):
            yield


def _pad_left(cache: Any, columns: int) -> None:
    if columns <= 0:
        return
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name)
            pad = tensor.new_zeros(*tensor.shape[:2], columns, tensor.shape[3])
            setattr(layer, name, torch.cat([pad, tensor], dim=2))


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    if missing <= 0:
        return mask
    return torch.cat([mask.new_zeros(mask.shape[0], missing), mask], dim=1)
