"""The features nearest to one feature by the cosine of their decoder rows.

One row against all is one matrix-vector product; it runs in row chunks cast to float32, so a
bfloat16 decoder of 16,384 x 4,096 costs at most ``chunk_rows`` x d_model float32 of working
memory per call and no full-precision copy of the decoder.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_ROWS = 2048


def decoder_cosines(
    decoder: torch.Tensor,
    norms: torch.Tensor,
    feature: int,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> torch.Tensor:
    """Cosine of decoder row ``feature`` with every row of ``decoder`` [d_sae, d_model], as
    float32 [d_sae]; ``norms`` [d_sae] are the rows' L2 norms. A zero row has cosine 0."""
    row = decoder[feature].float()
    dots = torch.cat(
        [
            decoder[start : start + chunk_rows].float() @ row
            for start in range(0, decoder.shape[0], chunk_rows)
        ]
    )
    scale = norms.float().to(dots.device) * float(norms[feature])
    return torch.where(scale > 0, dots / scale.clamp_min(torch.finfo(torch.float32).tiny), 0.0)


def nearest_features(
    decoder: torch.Tensor, norms: torch.Tensor, feature: int, k: int
) -> list[tuple[int, float]]:
    """The ``k`` other features with the highest decoder cosine, best first (lower index
    first on ties), with their cosines."""
    cosines = decoder_cosines(decoder, norms, feature).cpu()
    cosines[feature] = -torch.inf
    count = min(k, cosines.shape[0] - 1)
    if count <= 0:
        return []
    values, indices = torch.sort(cosines, descending=True, stable=True)
    return list(zip(indices[:count].tolist(), values[:count].tolist(), strict=True))
