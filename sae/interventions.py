"""Steering interventions as plain values: what to change on the residual stream, not where.

Where (which rows and tokens) is a mask the caller supplies; `maira_sae.sae.steering` does the
math. Exactly one of ``feature`` (an SAE feature index) or ``direction`` (a raw vector of
length d_model) is set. For a raw direction u (normalised to unit length) the "activation" is
the projection h . u, so CLAMP, ABLATE and SCALE act on that coefficient (ABLATE is directional
ablation).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch


class SteeringMode(enum.Enum):
    ADD = "add"  # h += value * unit direction (the decoder row), value in activation units
    CLAMP = "clamp"  # set the activation to value: h += (value - f_i(h)) * W_dec[i]
    ABLATE = "ablate"  # CLAMP to 0; value is ignored
    SCALE = "scale"  # multiply the activation by value: h += (value - 1) * f_i(h) * W_dec[i]


@dataclass(frozen=True, eq=False)
class Intervention:
    mode: SteeringMode
    value: float = 0.0
    feature: int | None = None
    direction: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.feature is None) == (self.direction is None):
            raise ValueError("an intervention needs exactly one of a feature index or a direction")
        if not math.isfinite(self.value):
            raise ValueError(f"intervention value must be finite, got {self.value}")
        if self.feature is not None and self.feature < 0:
            raise ValueError(f"feature index must be >= 0, got {self.feature}")
        if self.direction is not None and self.direction.ndim != 1:
            raise ValueError("a raw direction must be a vector of length d_model")
