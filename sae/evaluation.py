"""How well an SAE fits a set of activations, as it is served: threshold encode, no batch top-k.

Streams over the activations in blocks and accumulates in float64, so it works on harvests
larger than one batch and gives the same numbers whatever the block size (up to rounding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from maira_sae.sae.model import MatryoshkaSAE


@dataclass(frozen=True)
class SaeEvaluation:
    """Over ``tokens`` activations. ``l0`` is the mean number of active features per token;
    explained variance is 1 - SSE / total variance around the mean token, in residual units,
    for the full SAE and for each Matryoshka level; ``dead_fraction`` is the share of features
    that never fire on these tokens."""

    tokens: int
    l0: float
    mse: float
    explained_variance: float
    level_explained_variance: tuple[float, ...]
    dead_fraction: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def evaluate_sae(
    sae: MatryoshkaSAE, activations: torch.Tensor, *, block_size: int = 4096
) -> SaeEvaluation:
    """L0, MSE, explained variance (overall and per level) and dead fraction on ``activations``
    [N, d_model] (any device and dtype; blocks are moved to the SAE's device)."""
    if activations.ndim != 2 or activations.shape[0] < 2:
        raise ValueError(f"need at least two activations [N, d_model], got {activations.shape}")
    levels = range(1, sae.num_levels + 1)
    active_count = 0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=sae.device)
    sum_x = torch.zeros(sae.d_model, dtype=torch.float64, device=sae.device)
    sum_sq = torch.zeros((), dtype=torch.float64, device=sae.device)
    sse = torch.zeros(sae.num_levels, dtype=torch.float64, device=sae.device)
    with torch.no_grad():
        for block in activations.split(block_size):
            x = block.to(device=sae.device, dtype=torch.float32)
            f = sae.encode(x)
            active = f > 0
            active_count += int(active.sum())
            fired |= active.any(dim=0)
            sum_x += x.sum(dim=0, dtype=torch.float64)
            sum_sq += x.double().pow(2).sum()
            for level in levels:
                width = sae.level_width(level)
                reconstruction = sae.decode(f[:, :width]) / sae.input_scale
                sse[level - 1] += (x - reconstruction).double().pow(2).sum()
    n = activations.shape[0]
    total_variance = float(sum_sq - sum_x.pow(2).sum() / n)
    explained = [1.0 - float(e) / total_variance if total_variance > 0 else 0.0 for e in sse]
    return SaeEvaluation(
        tokens=n,
        l0=active_count / n,
        mse=float(sse[-1]) / (n * sae.d_model),
        explained_variance=explained[-1],
        level_explained_variance=tuple(explained),
        dead_fraction=1.0 - float(fired.float().mean()),
    )
