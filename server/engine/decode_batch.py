"""The rows of every running generation, decoded together: one forward per step for all.

Calls join between steps, each with the KV cache of its prefill, and their rows leave as they
end. The rows share one KV cache of transformers' own layout, left-padded: a row's positions
are right-aligned at the end of the cache, an attention mask hides the padding, and every row
gets its own position ids, so rows of different prompt lengths and start times sit in one
forward. Columns that no row needs any more are cut from the left. Each call steers only its
own rows, at its own SAE's layer and at its own position.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from maira_sae.server.engine.generation import GenerationCall, Prefilled
from maira_sae.server.engine.hooks import edit_residuals
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration


class DecodeBatch:
    """Active generation calls and their shared KV cache (used by the engine thread only)."""

    def __init__(self, model: Maira2ForConditionalGeneration) -> None:
        self._model = model
        self._calls: list[GenerationCall] = []  # in row order: each call's rows are contiguous
        self._logits: dict[int, torch.Tensor] = {}  # id(call) -> logits [active, vocab]
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # long [rows, cached positions]

    @property
    def calls(self) -> tuple[GenerationCall, ...]:
        return tuple(self._calls)

    @property
    def rows(self) -> int:
        return sum(len(call.active) for call in self._calls)

    @property
    def cached_positions(self) -> int:
        """Columns of the shared KV cache (padding included): its size is rows x this."""
        return 0 if self._mask is None else int(self._mask.shape[1])

    def join(self, call: GenerationCall, prefilled: Prefilled) -> None:
        """Add a call after its prefill; its first tokens are sampled at the next step."""
        self._logits[id(call)] = prefilled.logits
        mask = torch.ones(
            (len(call.active), prefilled.length), dtype=torch.long, device=self._model.device
        )
        if self._cache is None:
            self._cache, self._mask = prefilled.cache, mask
        else:
            assert self._mask is not None
            width = max(self.cached_positions, prefilled.length)
            self._pad_left(self._cache, width - self.cached_positions)
            self._pad_left(prefilled.cache, width - prefilled.length)
            for ours, theirs in zip(self._cache.layers, prefilled.cache.layers, strict=True):
                ours.keys = torch.cat([ours.keys, theirs.keys])
                ours.values = torch.cat([ours.values, theirs.values])
            self._mask = torch.cat([_pad_mask(self._mask, width), _pad_mask(mask, width)], dim=0)
        self._calls.append(call)

    def step(self) -> list[GenerationCall]:
        """Sample every row's next token, retire the rows that end, and run one forward for
        the others; returns the calls that ended in this step (their results are final)."""
        keep: list[int] = []
        ended: list[GenerationCall] = []
        start = 0
        for call in self._calls:
            width = len(call.active)
            going_on = call.take(self._logits.pop(id(call)))
            keep += [start + slot for slot in going_on]
            start += width
            if call.done:
                ended.append(call)
        self._select(keep)
        self._calls = [call for call in self._calls if not call.done]
        if self._calls:
            self._forward()
        return ended

    def remove(self, call: GenerationCall) -> None:
        """Take a stopped call's rows out (``call.stop`` first)."""
        start = 0
        keep: list[int] = []
        for other in self._calls:
            width = len(self._logits[id(other)])
            if other is not call:
                keep += range(start, start + width)
            start += width
        self._logits.pop(id(call), None)
        self._calls = [other for other in self._calls if other is not call]
        self._select(keep)

    def _forward(self) -> None:
        assert self._mask is not None
        device = self._model.device
        tokens = torch.cat([call.next_tokens for call in self._calls]).to(device)  # type: ignore[misc]
        positions = torch.tensor(
            [call.position for call in self._calls for _ in call.active], device=device
        )
        self._mask = torch.cat(
            [self._mask, torch.ones((len(tokens), 1), dtype=torch.long, device=device)], dim=1
        )
        with torch.inference_mode(), self._steering():
            output = self._model(
                input_ids=tokens.unsqueeze(1),
                attention_mask=self._mask,
                position_ids=positions.unsqueeze(1),
                cache=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self._cache = output.cache
        logits = output.logits[:, -1, :]
        start = 0
        for call in self._calls:
            width = len(call.active)
            self._logits[id(call)] = logits[start : start + width]
            start += width

    @contextmanager
    def _steering(self) -> Iterator[None]:
        """One edit per SAE layer that applies each call's steerer to that call's rows."""
        slices: dict[int, list[tuple[slice, Any]]] = {}
        start = 0
        for call in self._calls:
            width = len(call.active)
            steerer = call.steerer
            if steerer is not None:
                steerer.set_chunk(call.position)
                slices.setdefault(call.steer_layer, []).append(
                    (slice(start, start + width), steerer)
                )
            start += width

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

    def _select(self, keep: list[int]) -> None:
        """Keep these rows of the cache, then cut the columns no kept row uses."""
        if self._mask is None:
            return
        if not keep:
            self._cache, self._mask = None, None
            return
        if len(keep) != self._mask.shape[0]:
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

    @staticmethod
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
