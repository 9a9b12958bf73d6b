"""Nearest features by decoder cosine, against a direct computation."""

from __future__ import annotations

import pytest
import torch

from maira_sae.sae.decoder_neighbours import decoder_cosines, nearest_features


def test_cosines_match_the_definition_in_any_chunking():
    generator = torch.Generator().manual_seed(0)
    decoder = torch.randn(37, 16, generator=generator)
    norms = decoder.norm(dim=1)
    expected = torch.nn.functional.cosine_similarity(decoder, decoder[5][None], dim=1)
    for chunk_rows in (1, 8, 37, 100):
        got = decoder_cosines(decoder, norms, 5, chunk_rows=chunk_rows)
        assert torch.allclose(got, expected, atol=1e-6)


def test_nearest_are_the_most_aligned_rows_best_first():
    decoder = torch.tensor(
        [
            [1.0, 0.0, 0.0],
            [0.9, 0.1, 0.0],  # nearly row 0
            [-1.0, 0.0, 0.0],  # opposite
            [0.0, 0.0, 0.0],  # dead feature: cosine 0
            [2.0, 2.0, 0.0],  # 45 degrees, and longer (cosine ignores length)
            [0.0, 3.0, 0.0],
        ]
    )
    norms = decoder.norm(dim=1)
    nearest = nearest_features(decoder, norms, 0, 3)
    assert [feature for feature, _ in nearest] == [1, 4, 3]
    assert nearest[0][1] == pytest.approx(0.9 / (0.81 + 0.01) ** 0.5)
    assert nearest[1][1] == pytest.approx(2**-0.5)
    assert nearest[2][1] == 0.0
    assert 0 not in [feature for feature, _ in nearest_features(decoder, norms, 0, 10)]
    assert len(nearest_features(decoder, norms, 0, 10)) == 5
    assert nearest_features(decoder, norms, 3, 2) == [(0, 0.0), (1, 0.0)]  # ties: lower index


def test_a_bfloat16_decoder_is_compared_in_float32():
    generator = torch.Generator().manual_seed(1)
    decoder = torch.randn(300, 64, generator=generator).bfloat16()
    norms = decoder.float().norm(dim=1)
    exact = torch.nn.functional.cosine_similarity(decoder.float(), decoder[7].float()[None])
    assert torch.allclose(decoder_cosines(decoder, norms, 7, chunk_rows=64), exact, atol=1e-5)
