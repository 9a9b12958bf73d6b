"""The graph-ready decode batch: the ``DecodeBatch`` contract on buffers allocated once.

The running rows live in the first slots of a ``SlotCache``; a row that ends hands its slot
to the last row (one row's copy), so the rows in use are always slots ``0..n``. A decode
step runs the smallest bucket of slots (1, 2, 4, ... up to every slot) that holds them:
tokens, positions and the attention mask are views of fixed buffers, steering is
``RowSteering``'s fixed-shape tensors, and the KV cache is written in place, so each bucket
has one shape for good. That is what lets the step be captured (``compile_mode``: a
torch.compile mode such as "reduce-overhead", which captures CUDA graphs, or a backend such
as "aot_eager"); eagerly it computes what ``DynamicDecodeBatch`` computes. The one host sync per
step is the sampler reading the new tokens.

All rows write one column per step. A call whose prompt is longer than that column shifts
the rows in use to the right as it joins; when the column reaches the cache's width the rows
shift left by the columns none of them uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from maira_sae.sae.model import MatryoshkaSAE
from maira_sae.server.engine.decode_batch import DecodeBatch
from maira_sae.server.engine.decode_choices import COMPILE_BACKENDS
from maira_sae.server.engine.generation import GenerationCall, Prefilled
from maira_sae.server.engine.row_steering import RowSteering
from maira_sae.server.engine.slot_cache import SlotCache
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration

DecodeForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class StaticDecodeBatch(DecodeBatch):
    """Running generation calls in preallocated slots: a member's rows are its slots."""

    _cache: SlotCache

    def __init__(
        self,
        model: Maira2ForConditionalGeneration,
        cache: SlotCache,
        steering: Sequence[RowSteering],
        *,
        compile_mode: str = "off",
    ) -> None:
        super().__init__(model)
        self._cache = cache
        self._steering = tuple(steering)
        device = model.device
        self._tokens = torch.zeros(cache.slots, dtype=torch.long, device=device)
        self._positions = torch.zeros(cache.slots, dtype=torch.long, device=device)
        self._mask = torch.zeros(cache.slots, cache.width, dtype=torch.long, device=device)
        self._forward_rows = _compiled(self._decode, compile_mode)
        self._first: list[int] = [0] * cache.slots  # each slot's first cached column
        self._column = 0  # the column the next forward writes

    @property
    def slots(self) -> int:
        return self._cache.slots

    @property
    def cached_positions(self) -> int:
        used = self.rows
        return self._column - min(self._first[:used]) if used else 0

    def reset(self) -> StaticDecodeBatch:
        """The buffers stay, the calls go."""
        for slot in range(self.rows):
            self._release(slot)
        self._members, self._column = [], 0
        return self

    def close(self) -> None:
        """Unhook the steering from the model: another engine may serve it next."""
        for steering in self._steering:
            steering.detach()

    def join(self, call: GenerationCall, prefilled: Prefilled) -> None:
        used, length = self.rows, prefilled.length
        if used + len(call.active) > self._cache.slots:
            raise RuntimeError("the static decode batch has no free slots for this call")
        if length > self._cache.width:
            raise RuntimeError("the prompt is longer than the static cache")
        if not used:
            self._column = length
        elif length > self._column:
            self._shift(length - self._column)
        self._cache.set_column(self._column)
        start = self._column - length
        slots = list(range(used, used + len(call.active)))
        self._cache.place(slots, prefilled.cache, start)
        for row, slot in zip(call.active, slots, strict=True):
            self._mask[slot] = 0
            self._mask[slot, start : self._column] = 1
            self._first[slot] = start
            if call.steerer is not None:
                self._steering_of(call).assign(slot, call.steerer.plan, row)
        self._add(call, slots, prefilled)

    def _forward(self) -> torch.Tensor:
        rows = self.rows
        width = _bucket(rows, self._cache.slots)
        if self._column == self._cache.width:
            self._shift(-min(self._first[:rows]))
        tokens, positions = [0] * width, [0] * width
        for member in self._members:
            call = member.call
            assert call.next_tokens is not None
            for slot, token in zip(member.rows, call.next_tokens.tolist(), strict=True):
                tokens[slot], positions[slot] = token, call.position
        self._tokens[:width].copy_(torch.tensor(tokens), non_blocking=True)
        self._positions[:width].copy_(torch.tensor(positions), non_blocking=True)
        self._mask[:width, self._column] = 1
        for steering in self._steering:
            steering.set_positions(positions + [0] * (self._cache.slots - width))
        with torch.inference_mode(), self._armed():
            logits = self._forward_rows(
                self._tokens[:width], self._positions[:width], self._mask[:width]
            )
        self._column += 1
        return logits

    @contextmanager
    def _armed(self) -> Iterator[None]:
        with ExitStack() as stack:
            for steering in self._steering:
                stack.enter_context(steering.armed())
            yield

    def _steering_of(self, call: GenerationCall) -> RowSteering:
        assert call.steerer is not None
        for steering in self._steering:
            if steering.sae is call.steerer.sae and steering.layer == call.steer_layer:
                return steering
        raise RuntimeError(f"no static steering for the SAE at layer {call.steer_layer}")

    def _free(self, rows: list[int]) -> None:
        """Free these slots and move the last rows into them: used slots stay 0..n."""
        for slot in rows:
            self._release(slot)
        used = self.rows
        holes = sorted(slot for slot in rows if slot < used)
        owners = {slot: member.rows for member in self._members for slot in member.rows}
        movers = sorted(slot for slot in owners if slot >= used)
        for source, target in zip(movers, holes, strict=True):
            columns = slice(self._first[source], self._column)
            self._cache.move(source, target, columns)
            self._mask[target] = self._mask[source]
            self._first[target] = self._first[source]
            for steering in self._steering:
                steering.move(source, target)
            slots = owners[source]
            slots[slots.index(source)] = target
            self._release(source)

    def _release(self, slot: int) -> None:
        self._mask[slot] = 0
        for steering in self._steering:
            steering.clear(slot)

    def _shift(self, by: int) -> None:
        """Move the rows in use ``by`` columns (right if positive, left if negative)."""
        rows = self.rows
        if not by or not rows:
            return
        lowest = min(self._first[:rows])
        columns = slice(lowest, self._column)
        if lowest + by < 0 or self._column + by > self._cache.width:
            raise RuntimeError("the static cache has no room to shift its rows")
        self._cache.shift(rows, columns, by)
        self._mask[:rows, columns.start + by : columns.stop + by] = self._mask[
            :rows, columns
        ].clone()
        vacated = slice(lowest, lowest + by) if by > 0 else slice(self._column + by, self._column)
        self._mask[:rows, vacated] = 0
        for slot in range(rows):
            self._first[slot] += by
        self._column += by
        self._cache.set_column(self._column)


def _bucket(rows: int, slots: int) -> int:
    """The number of slots a step over ``rows`` rows runs: the next power of two, at most
    every slot, so a captured step exists for few shapes."""
    width = 1
    while width < rows:
        width *= 2
    return min(width, slots)


def _compiled(forward: DecodeForward, mode: str) -> DecodeForward:
    """``mode`` is one of ``COMPILE_CHOICES`` (``DecodeSetting`` checked it)."""
    if mode == "off":
        return forward
    if mode in COMPILE_BACKENDS:
        return torch.compile(forward, backend=mode, dynamic=False)  # type: ignore[return-value]
    return torch.compile(forward, mode=mode, dynamic=False)  # type: ignore[return-value]


@dataclass(frozen=True)
class StaticDecodeSettings:
    """The static batch's size: ``slots`` rows of ``width`` positions, ``capacity``
    interventions a row, and how the step is compiled (``COMPILE_CHOICES``)."""

    slots: int
    width: int
    capacity: int
    compile_mode: str = "off"

    def build(
        self,
        model: Maira2ForConditionalGeneration,
        sae_layers: Sequence[tuple[MatryoshkaSAE, int]],
    ) -> StaticDecodeBatch:
        """Allocate the cache and the steering buffers, and hook each SAE's layer for good."""
        cache = SlotCache(
            model.config.text_config,
            slots=self.slots,
            width=self.width,
            dtype=model.dtype,
            device=model.device,
        )
        steering = [
            RowSteering(
                sae,
                layer,
                model.decoder_layers,
                slots=self.slots,
                capacity=self.capacity,
                device=model.device,
            )
            for sae, layer in sae_layers
        ]
        return StaticDecodeBatch(model, cache, steering, compile_mode=self.compile_mode)
