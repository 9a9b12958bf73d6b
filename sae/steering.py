"""Steering math: edits on the residual stream as deltas, so the SAE's reconstruction error stays.

For an SAE feature i with decoder row d_i = W_dec[i] (SAE space; divided by ``input_scale`` to
reach residual space) and activation a = f_i(h):

- ADD v:    h += v · d_i / ||d_i||
- CLAMP c:  h += (c - a) · d_i
- ABLATE:   h += -a · d_i
- SCALE s:  h += (s - 1) · a · d_i

For a raw direction u (normalised to unit length) the activation is a = h · u and d_i becomes u.

CLAMP sets the feature *exactly* to c on re-encoding only when W_enc[:, i] · d_i = 1, the
feature is active (above its threshold before and after) and no other feature's code changes
the picture; for a real SAE it moves the activation towards c along the decoder direction.

Every delta is computed from the unedited hidden state and the deltas are summed, so the order
of interventions does not matter. Each one applies only where its mask is True.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maira_sae.sae.interventions import Intervention, SteeringMode
from maira_sae.sae.model import MatryoshkaSAE


def validate_intervention(
    intervention: Intervention, sae: MatryoshkaSAE | None, d_model: int
) -> None:
    """Raise ``ValueError`` if ``intervention`` cannot apply to hidden states of ``d_model``.

    Cheap, so a server can call it before it spends any compute on a request.
    """
    if intervention.direction is not None:
        direction = intervention.direction
        if direction.shape != (d_model,):
            raise ValueError(
                f"a raw direction must have length d_model = {d_model}, "
                f"got shape {tuple(direction.shape)}"
            )
        norm = torch.linalg.vector_norm(direction.float())
        if not (torch.isfinite(norm) and norm > 0):
            raise ValueError("a raw direction must be finite and non-zero")
        return
    feature = intervention.feature
    assert feature is not None  # Intervention guarantees exactly one of feature or direction
    if sae is None:
        raise ValueError(f"feature {feature} cannot be steered: no SAE is loaded")
    if sae.d_model != d_model:
        raise ValueError(f"the SAE reads d_model = {sae.d_model}, the hidden states have {d_model}")
    sae.check_feature(feature)
    if intervention.mode is SteeringMode.ADD and not bool(sae.W_dec[feature].any()):
        raise ValueError(f"feature {feature} has a zero decoder row: it has no direction to add")


def apply_interventions(
    hidden: torch.Tensor,
    sae: MatryoshkaSAE | None,
    interventions: Sequence[Intervention],
    masks: torch.Tensor,
) -> torch.Tensor:
    """Return ``hidden`` [B, T, D] edited by ``interventions`` where ``masks`` [N, B, T] is True.

    The result has ``hidden``'s dtype and device; the math runs in float32. Positions that no
    mask selects are returned bit-for-bit unchanged. To apply the same interventions to many
    chunks (a decode loop), build a ``SteeringEdit`` once instead.
    """
    if hidden.ndim != 3:
        raise ValueError(f"hidden states must be [batch, tokens, d_model], got {hidden.shape}")
    batch, tokens, d_model = hidden.shape
    expected = (len(interventions), batch, tokens)
    if masks.dtype != torch.bool or tuple(masks.shape) != expected:
        raise ValueError(
            f"masks must be a bool tensor of shape {expected}, "
            f"got {masks.dtype} {tuple(masks.shape)}"
        )
    return SteeringEdit(interventions, sae, d_model, hidden.device).apply(hidden, masks)


class SteeringEdit:
    """Interventions validated once, with their directions and the SAE features they read
    already on the device: applying it runs only tensor math, with no host-device copies or
    syncs, so a decode loop can apply it at every step cheaply."""

    def __init__(
        self,
        interventions: Sequence[Intervention],
        sae: MatryoshkaSAE | None,
        d_model: int,
        device: torch.device,
    ) -> None:
        for intervention in interventions:
            validate_intervention(intervention, sae, d_model)
        self._interventions = tuple(interventions)
        self._sae = sae
        self._directions = residual_directions(self._interventions, sae, device)
        # An ADD moves every selected position by the same vector: computed once here.
        self._add_steps = {
            index: intervention.value * self._directions[index]
            for index, intervention in enumerate(self._interventions)
            if intervention.mode is SteeringMode.ADD
        }
        self._zero = torch.zeros((), device=device)
        # Every SAE feature a CLAMP, ABLATE or SCALE reads, each encoded once per chunk.
        feature_slots: dict[int, list[int]] = {}
        for index, intervention in enumerate(self._interventions):
            if intervention.mode is not SteeringMode.ADD and intervention.feature is not None:
                feature_slots.setdefault(intervention.feature, []).append(index)
        self._feature_slots = tuple(feature_slots.values())
        self._features = (
            torch.tensor(list(feature_slots), device=sae.device)
            if feature_slots and sae is not None
            else None
        )

    def apply(self, hidden: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``hidden`` [B, T, D] edited where ``masks`` [N, B, T] (one per intervention) is True."""
        if not self._interventions:
            return hidden
        masks = masks.to(hidden.device)
        h = hidden.float()
        activations = self._activations(h)
        deltas = [
            torch.where(masks[index].unsqueeze(-1), self._step(index, activations), self._zero)
            for index in range(len(self._interventions))
        ]
        edited = (h + sum(deltas[1:], deltas[0])).to(hidden.dtype)
        return torch.where(masks.any(dim=0).unsqueeze(-1), edited, hidden)

    def _step(self, index: int, activations: dict[int, torch.Tensor]) -> torch.Tensor:
        """Intervention ``index``'s move: [B, T, D], or for an ADD one [D] vector for all."""
        add_step = self._add_steps.get(index)
        if add_step is not None:
            return add_step
        coefficient = _coefficient(self._interventions[index], activations[index])
        return coefficient.unsqueeze(-1) * self._directions[index]

    def _activations(self, h: torch.Tensor) -> dict[int, torch.Tensor]:
        """Activation [B, T] of every intervention that needs one (all but ADD), from the
        unedited ``h``."""
        activations = {
            index: h @ self._directions[index]
            for index, intervention in enumerate(self._interventions)
            if intervention.mode is not SteeringMode.ADD and intervention.direction is not None
        }
        if self._features is not None:
            assert self._sae is not None
            encoded = self._sae.encode_features(h, self._features)
            encoded = encoded.to(device=h.device, dtype=torch.float32)
            for column, indices in enumerate(self._feature_slots):
                for index in indices:
                    activations[index] = encoded[..., column]
        return activations


def residual_directions(
    interventions: Sequence[Intervention], sae: MatryoshkaSAE | None, device: torch.device
) -> list[torch.Tensor]:
    """Residual-space direction per intervention (float32): unit for ADD and raw directions."""
    directions = []
    for intervention in interventions:
        if intervention.direction is not None:
            direction = intervention.direction.to(device=device, dtype=torch.float32)
            directions.append(direction / torch.linalg.vector_norm(direction))
            continue
        assert sae is not None and intervention.feature is not None
        row = sae.W_dec[intervention.feature].to(device=device, dtype=torch.float32)
        if intervention.mode is SteeringMode.ADD:
            row = row / torch.linalg.vector_norm(row)
        directions.append(row / sae.input_scale)
    return directions


def coefficient_terms(intervention: Intervention) -> tuple[float, float]:
    """``(offset, gain)``: an intervention moves ``offset + gain * activation`` along its
    direction (an ADD reads no activation: its gain is 0)."""
    if intervention.mode is SteeringMode.ADD:
        return intervention.value, 0.0
    if intervention.mode is SteeringMode.CLAMP:
        return intervention.value, -1.0
    if intervention.mode is SteeringMode.ABLATE:
        return 0.0, -1.0
    return 0.0, intervention.value - 1.0


def _coefficient(intervention: Intervention, activation: torch.Tensor) -> torch.Tensor:
    """How far a CLAMP, ABLATE or SCALE moves along its direction, per position: [B, T]."""
    offset, gain = coefficient_terms(intervention)
    return offset + gain * activation
