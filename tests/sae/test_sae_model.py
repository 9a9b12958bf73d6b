"""MatryoshkaSAE math against plain reference computations."""

from __future__ import annotations

import pytest
import torch

from maira_sae.sae import MatryoshkaSAE


def reference_encode(x, weights, threshold=None, top_k=None, scale=1.0, subtract_b_dec=True):
    """Feature activations computed the long way, in float64."""
    w_enc, b_enc, b_dec = (weights[name].double() for name in ("W_enc", "b_enc", "b_dec"))
    shifted = x.double() * scale - (b_dec if subtract_b_dec else 0)
    f = torch.einsum("...d,df->...f", shifted, w_enc) + b_enc
    f = f.clamp(min=0)
    if threshold is not None:
        f = f * (f > torch.as_tensor(threshold, dtype=torch.float64))
    if top_k is not None:
        cutoff = f.sort(dim=-1, descending=True).values[..., top_k - 1 : top_k]
        f = f * (f >= cutoff)
    return f


def test_encode_with_scalar_threshold_matches_reference(make_sae, weights, tokens):
    sae = make_sae(threshold=0.3)
    f = sae.encode(tokens)
    assert f.shape == (3, 5, 32) and f.dtype == torch.float32
    torch.testing.assert_close(f, reference_encode(tokens, weights, threshold=0.3).float())
    assert bool((f > 0).any()) and bool((f == 0).any())
    assert bool(((f == 0) | (f > 0.3)).all())


def test_encode_with_per_feature_threshold_matches_reference(make_sae, weights, tokens):
    threshold = torch.linspace(0.0, 1.5, 32)
    f = make_sae(threshold=threshold).encode(tokens)
    torch.testing.assert_close(f, reference_encode(tokens, weights, threshold=threshold).float())
    assert bool(((f == 0) | (f > threshold)).all())


def test_encode_without_threshold_or_top_k_is_plain_relu(make_sae, weights, tokens):
    f = make_sae(threshold=None).encode(tokens)
    torch.testing.assert_close(f, reference_encode(tokens, weights).float())


def test_top_k_keeps_the_k_largest_per_token(make_sae, weights, tokens):
    f = make_sae(top_k=3).encode(tokens)
    torch.testing.assert_close(f, reference_encode(tokens, weights, top_k=3).float())
    assert bool(((f > 0).sum(dim=-1) <= 3).all())
    assert bool(((f > 0).sum(dim=-1) == 3).any())


def test_input_scale_and_b_dec_option(make_sae, weights, tokens):
    scaled = make_sae(threshold=0.3, input_scale=2.5, apply_b_dec_to_input=False)
    expected = reference_encode(tokens, weights, 0.3, scale=2.5, subtract_b_dec=False)
    torch.testing.assert_close(scaled.encode(tokens), expected.float())


def test_level_widths_and_boundaries(make_sae):
    sae = make_sae()
    assert (sae.d_model, sae.d_sae, sae.num_levels) == (16, 32, 3)
    assert sae.group_sizes == (4, 12, 16)
    assert sae.group_boundaries == (4, 16, 32)
    assert [sae.level_width(level) for level in (1, 2, 3, None)] == [4, 16, 32, 32]
    for bad in (0, 4, -1):
        with pytest.raises(ValueError, match="level"):
            sae.level_width(bad)


@pytest.mark.parametrize("rule", [{"threshold": 0.3}, {"top_k": 3}])
def test_level_code_is_prefix_of_full_code(make_sae, tokens, rule):
    sae = make_sae(**rule)
    full = sae.encode(tokens)
    for level in (1, 2, 3):
        width = sae.level_width(level)
        assert torch.equal(sae.encode(tokens, level=level), full[..., :width])


def test_decode_full_and_level(make_sae, weights, tokens):
    sae = make_sae()
    f = sae.encode(tokens)
    expected = f.double() @ weights["W_dec"].double() + weights["b_dec"].double()
    torch.testing.assert_close(sae.decode(f), expected.float())
    f1 = sae.encode(tokens, level=1)
    expected_level = f1.double() @ weights["W_dec"][:4].double() + weights["b_dec"].double()
    torch.testing.assert_close(sae.decode(f1), expected_level.float())
    with pytest.raises(ValueError, match="level widths"):
        sae.decode(f[..., :5])


def test_reconstruct_returns_to_residual_space(make_sae, tokens):
    sae = make_sae(input_scale=4.0)
    expected = sae.decode(sae.encode(tokens, level=2)) / 4.0
    assert torch.equal(sae.reconstruct(tokens, level=2), expected)


@pytest.mark.parametrize("rule", [{"threshold": 0.3}, {"top_k": 4}])
def test_token_code_does_not_depend_on_the_batch(make_sae, tokens, rule):
    sae = make_sae(**rule)
    token = tokens[1, 2]
    alone = sae.encode(token.reshape(1, 1, -1))[0, 0]
    generator = torch.Generator().manual_seed(7)
    for batch, length in ((1, 1), (2, 3), (7, 11), (64, 9)):
        others = torch.randn(batch, length, sae.d_model, generator=generator) * 5
        others[batch // 2, length // 2] = token
        assert torch.equal(sae.encode(others)[batch // 2, length // 2], alone)


def test_encode_features_equals_columns_of_full_code(make_sae, tokens):
    columns = torch.tensor([30, 2, 2, 17])
    for sae in (make_sae(threshold=torch.linspace(0, 1, 32)), make_sae(top_k=3)):
        torch.testing.assert_close(
            sae.encode_features(tokens, columns), sae.encode(tokens)[..., columns]
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_float32_features(make_sae, tokens, dtype):
    sae = make_sae()
    low = tokens.to(dtype)
    f = sae.encode(low)
    assert f.dtype == torch.float32
    assert torch.equal(f, sae.encode(low.float()))
    full = sae.encode(tokens)
    active = (f > 0) & (full > 0)  # rounding may move values across the threshold
    assert bool(active.sum() > 0.8 * (full > 0).sum())
    torch.testing.assert_close(f[active], full[active], atol=0.1, rtol=0.05)


def test_bfloat16_compute_dtype(make_sae, tokens):
    sae = make_sae(compute_dtype=torch.bfloat16)
    assert sae.W_enc.dtype == torch.bfloat16 and sae.threshold.dtype == torch.bfloat16
    assert sae.encode(tokens).dtype == torch.bfloat16


def test_unset_threshold_needs_top_k(weights):
    with pytest.raises(ValueError, match="never set"):
        MatryoshkaSAE(**weights, group_sizes=[32], threshold=-1.0)
    sae = MatryoshkaSAE(**weights, group_sizes=[32], threshold=-1.0, top_k=2)
    assert sae.threshold is None and sae.top_k == 2


def test_threshold_takes_precedence_over_top_k(weights):
    sae = MatryoshkaSAE(**weights, group_sizes=[32], threshold=0.5, top_k=2)
    assert sae.top_k is None and float(sae.threshold) == 0.5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"W_dec": torch.zeros(32, 15)}, "W_dec has shape"),
        ({"b_enc": torch.zeros(31)}, "b_enc has shape"),
        ({"b_dec": torch.zeros(32)}, "b_dec has shape"),
        ({"group_sizes": [4, 4]}, "sum to 8"),
        ({"group_sizes": [0, 32]}, "positive"),
        ({"threshold": torch.zeros(31)}, "threshold must be"),
        ({"threshold": float("nan")}, "NaN"),
        ({"top_k": 0}, "top_k"),
        ({"input_scale": 0.0}, "input_scale"),
    ],
)
def test_invalid_construction_is_refused(weights, change, message):
    arguments = {**weights, "group_sizes": [32], "threshold": 0.1, **change}
    with pytest.raises(ValueError, match=message):
        MatryoshkaSAE(**arguments)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(weights, bad):
    weights["W_enc"][3, 4] = bad
    with pytest.raises(ValueError, match="W_enc has NaN or inf"):
        MatryoshkaSAE(**weights, group_sizes=[32], threshold=0.1)


def test_metadata_defaults_to_memory(make_sae):
    sae = make_sae()
    assert sae.metadata.source_format == "memory" and sae.metadata.path is None
    assert sae.device == torch.device("cpu")
