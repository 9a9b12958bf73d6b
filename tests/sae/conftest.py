"""Small random SAEs for the SAE tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from maira_sae.sae import MatryoshkaSAE

D_MODEL = 16
D_SAE = 32
GROUP_SIZES = (4, 12, 16)


def random_weights(d_model: int = D_MODEL, d_sae: int = D_SAE, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    decoder = torch.randn(d_sae, d_model, generator=generator)
    decoder = decoder / decoder.norm(dim=-1, keepdim=True)
    return {
        "W_enc": torch.randn(d_model, d_sae, generator=generator) * 0.5,
        "b_enc": torch.randn(d_sae, generator=generator) * 0.1,
        "W_dec": decoder,
        "b_dec": torch.randn(d_model, generator=generator) * 0.1,
    }


@pytest.fixture
def weights() -> dict:
    """Random weights of a 16 -> 32 SAE with unit-norm decoder rows."""
    return random_weights()


@pytest.fixture
def make_sae() -> Callable[..., MatryoshkaSAE]:
    """Factory: a random SAE with three Matryoshka groups; keyword arguments go to the class."""

    def make(seed: int = 0, **kwargs: object) -> MatryoshkaSAE:
        kwargs.setdefault("group_sizes", GROUP_SIZES)
        if "top_k" not in kwargs:
            kwargs.setdefault("threshold", 0.2)
        return MatryoshkaSAE(**random_weights(seed=seed), **kwargs)

    return make


@pytest.fixture
def tokens() -> torch.Tensor:
    """A [batch 3, tokens 5, d_model] block of residual-stream-like activations."""
    return torch.randn(3, 5, D_MODEL, generator=torch.Generator().manual_seed(1)) * 2
