"""Steering for every slot of a static decode batch, held in fixed-shape tensors.

Each slot has room for ``capacity`` interventions of one SAE. Intervention k of a slot moves
the residual by ``gate * (offset + gain * activation)`` along its direction, where the
activation is the SAE feature it reads or, for a raw direction or an ADD, the projection on
its direction (``sae.steering.coefficient_terms`` gives offset and gain per mode); the gate
says whether the intervention's scope covers this step's position. A slot whose gates are all
zero comes out bit-for-bit unedited, so "no edit" is just zeros, and the shapes never change.

The buffers are written in place between steps, never replaced, and the edit is one
permanent forward hook on the SAE's layer that does nothing unless armed. A captured decode
step (CUDA graphs, torch.compile) therefore replays the edit with the values of the current
step: a hook added after capture would silently never fire, and this design adds none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from maira_sae.sae.interventions import SteeringMode
from maira_sae.sae.model import MatryoshkaSAE
from maira_sae.sae.steering import coefficient_terms, residual_directions
from maira_sae.server.engine.steering_plan import SteeringPlan


class RowSteering:
    """The interventions of every slot for one SAE at its layer (engine thread only)."""

    def __init__(
        self,
        sae: MatryoshkaSAE,
        layer: int,
        decoder_layers: nn.ModuleList,
        *,
        slots: int,
        capacity: int,
        device: torch.device,
    ) -> None:
        self.sae = sae
        self.layer = layer
        self._capacity = capacity
        self._device = device
        self._directions = torch.zeros(slots, capacity, sae.d_model, device=device)
        self._offset = torch.zeros(slots, capacity, device=device)
        self._gain = torch.zeros(slots, capacity, device=device)
        self._feature = torch.zeros(slots, capacity, dtype=torch.long, device=device)
        self._reads_feature = torch.zeros(slots, capacity, dtype=torch.bool, device=device)
        self._gate = torch.zeros(slots, capacity, device=device)
        self._host_gate = torch.zeros(slots, capacity)
        self._scopes: list[tuple[SteeringPlan, tuple[int, ...]] | None] = [None] * slots
        self._armed = False
        self._handle = decoder_layers[layer].register_forward_hook(self._hook)

    def detach(self) -> None:
        """Take the hook off the layer (the model outlives this engine)."""
        self._handle.remove()

    @contextmanager
    def armed(self) -> Iterator[None]:
        """Edit the layer's output during this block (the static decode forward only)."""
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    @property
    def steered_slots(self) -> int:
        return sum(scope is not None for scope in self._scopes)

    def assign(self, slot: int, plan: SteeringPlan, row: int) -> None:
        """Give ``slot`` the interventions of ``plan``'s ``row``."""
        indices = plan.row_interventions(row)
        if len(indices) > self._capacity:
            raise ValueError(
                f"a row has {len(indices)} interventions; the static decode batch holds "
                f"{self._capacity} (limits.max_interventions_per_variant)"
            )
        self.clear(slot)
        if not indices:
            return
        interventions = [plan.interventions[index] for index in indices]
        directions = residual_directions(interventions, self.sae, self._device)
        for k, (intervention, direction) in enumerate(zip(interventions, directions, strict=True)):
            offset, gain = coefficient_terms(intervention)
            self._directions[slot, k] = direction
            self._offset[slot, k] = offset
            self._gain[slot, k] = gain
            reads = intervention.feature is not None and intervention.mode is not SteeringMode.ADD
            self._reads_feature[slot, k] = reads
            self._feature[slot, k] = intervention.feature if reads else 0
        self._scopes[slot] = (plan, indices)

    def clear(self, slot: int) -> None:
        for buffer in (self._directions, self._offset, self._gain, self._gate, self._feature):
            buffer[slot] = 0
        self._reads_feature[slot] = False
        self._host_gate[slot] = 0
        self._scopes[slot] = None

    def move(self, source: int, target: int) -> None:
        for buffer in self._buffers():
            buffer[target] = buffer[source]
        self._host_gate[target] = self._host_gate[source]
        self._scopes[target] = self._scopes[source]
        self.clear(source)

    def set_positions(self, positions: Sequence[int]) -> None:
        """Open each steered slot's gates for the position its next forward feeds
        (``positions[slot]``): one copy to the device, none when nothing is steered."""
        if not self.steered_slots:
            return
        gates: dict[tuple[int, int], list[bool]] = {}
        for slot, scope in enumerate(self._scopes):
            if scope is None:
                continue
            plan, indices = scope
            key = (id(plan), positions[slot])
            if key not in gates:
                gates[key] = plan.gates_at(positions[slot])
            self._host_gate[slot, : len(indices)] = torch.tensor(
                [gates[key][index] for index in indices], dtype=torch.float32
            )
        self._gate.copy_(self._host_gate, non_blocking=True)

    def _buffers(self) -> tuple[torch.Tensor, ...]:
        return (
            self._directions,
            self._offset,
            self._gain,
            self._gate,
            self._feature,
            self._reads_feature,
        )

    def _hook(self, _module: nn.Module, _args: object, output: torch.Tensor | tuple) -> object:
        if not self._armed:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        edited = self.edit(hidden)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    def edit(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` [b, T, D] (the first ``b`` slots) with each slot's interventions."""
        rows = hidden.shape[0]
        h = hidden.float()
        directions, gate = self._directions[:rows], self._gate[:rows]
        activation = torch.einsum("btd,bkd->btk", h, directions)
        features = self.sae.encode_row_features(h, self._feature[:rows]).float()
        activation = torch.where(self._reads_feature[:rows].unsqueeze(1), features, activation)
        move = gate.unsqueeze(1) * (
            self._offset[:rows].unsqueeze(1) + self._gain[:rows].unsqueeze(1) * activation
        )
        edited = (h + torch.einsum("btk,bkd->btd", move, directions)).to(hidden.dtype)
        return torch.where((gate != 0).any(dim=-1)[:, None, None], edited, hidden)
