"""SAE encode throughput (tokens per second) at d_sae 16384 (ef4 on d_model 4096) versus a
plain dense reference: one ``relu(x @ W_enc + b_enc)`` matmul with the same threshold.

The served encode multiplies in fixed blocks of rows so that a token's code never depends on
the batch (bit-identical whatever else is encoded); this measures what that costs. The issue
sets no target: the ratio is informational.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.harness import bench_arguments, check, emit, interleaved, median, synchronised
from bench.random_sae import EF4_GROUP_SIZES, random_sae
from maira_sae.sae.model import MatryoshkaSAE

D_MODEL = 4096
D_SAE = 16384


def dense_reference(sae: MatryoshkaSAE, x: torch.Tensor) -> torch.Tensor:
    assert sae.threshold is not None
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    return torch.where(f > sae.threshold, f, torch.zeros((), dtype=f.dtype, device=f.device))


def run(*, quick: bool, device: str = "cpu") -> dict[str, Any]:
    tokens = 128 if quick else 1420  # 1420: one frontal-only study
    repeats = 3 if quick else 5
    generator = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(tokens, D_MODEL, generator=generator, device=device)
    sae = random_sae(x, D_SAE, group_sizes=EF4_GROUP_SIZES)
    with torch.inference_mode():
        head = x[:64]  # the two must agree before their speeds are compared
        torch.testing.assert_close(sae.encode(head), dense_reference(sae, head), atol=1e-3, rtol=0)
        samples = interleaved(
            {
                "sae_encode": synchronised(lambda: sae.encode(x)),
                "dense": synchronised(lambda: dense_reference(sae, x)),
            },
            repeats,
        )
    rates = {name: tokens / median(values) for name, values in samples.items()}
    return {
        "bench": "sae_encode",
        "d_model": D_MODEL,
        "d_sae": D_SAE,
        "tokens": tokens,
        "tokens_per_s": rates,
        "checks": [
            check(
                "dense_over_sae_encode_throughput",
                rates["dense"] / rates["sae_encode"],
                None,
                repeats=repeats,
            )
        ],
    }


def main() -> None:
    arguments = bench_arguments(__doc__ or "")
    emit(run(quick=arguments.quick), arguments.out)


if __name__ == "__main__":
    main()
