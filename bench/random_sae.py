"""An SAE with random weights at a real size, calibrated on given residuals so that each
token keeps about ``target_l0`` features (so sparse outputs cost what a trained SAE's would)."""

from __future__ import annotations

import torch

from maira_sae.sae.model import MatryoshkaSAE

EF4_GROUP_SIZES = (512, 1024, 2048, 4096, 8704)  # [assumed] Matryoshka groups of 16384
CALIBRATION_ROWS = 512


def random_sae(
    calibration: torch.Tensor,
    d_sae: int,
    *,
    group_sizes: tuple[int, ...],
    target_l0: int = 64,
    seed: int = 0,
) -> MatryoshkaSAE:
    """Unit decoder rows, the encoder their transpose, ``b_dec`` the calibration mean and a
    threshold that leaves ``target_l0`` active features per calibration token on average.
    Built on ``calibration``'s device, in float32 (what the server loads SAEs as)."""
    device = calibration.device
    rows = calibration.reshape(-1, calibration.shape[-1])[:CALIBRATION_ROWS].float()
    d_model = rows.shape[-1]
    generator = torch.Generator(device=device).manual_seed(seed)
    w_dec = torch.randn(d_sae, d_model, generator=generator, device=device)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    b_dec = rows.mean(dim=0)
    pre = torch.relu((rows - b_dec) @ w_dec.T)
    kept = pre.flatten().topk(min(target_l0 * rows.shape[0], pre.numel())).values
    return MatryoshkaSAE(
        W_enc=w_dec.T,
        b_enc=torch.zeros(d_sae, device=device),
        W_dec=w_dec,
        b_dec=b_dec,
        group_sizes=group_sizes,
        threshold=float(kept[-1]),
    )
