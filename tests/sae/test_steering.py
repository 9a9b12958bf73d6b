"""Steering deltas on the residual stream.

The SAE here has tied weights with orthonormal decoder rows (d_sae <= d_model) and b_enc = 0,
so W_enc[:, i] . W_dec[i] = 1 and moving along W_dec[i] changes feature i alone: CLAMP then
re-encode must give exactly the clamped value wherever the feature was active.
"""

from __future__ import annotations

import pytest
import torch

from maira_sae.sae import (
    Intervention,
    MatryoshkaSAE,
    SteeringMode,
    apply_interventions,
    validate_intervention,
)

D_MODEL, D_SAE, FEATURE = 16, 8, 3


def tied_sae(input_scale: float = 1.0) -> MatryoshkaSAE:
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D_MODEL, D_SAE, generator=generator))
    return MatryoshkaSAE(
        W_enc=q,
        b_enc=torch.zeros(D_SAE),
        W_dec=q.T,
        b_dec=torch.randn(D_MODEL, generator=generator) * 0.1,
        group_sizes=[2, 6],
        threshold=0.0,
        input_scale=input_scale,
    )


def hidden_with_active_feature(sae: MatryoshkaSAE, batch: int = 2, tokens: int = 4):
    """Hidden states [B, T, D] on which FEATURE is active (activation 1..3) everywhere."""
    generator = torch.Generator().manual_seed(1)
    codes = torch.randn(batch, tokens, D_SAE, generator=generator)
    codes[..., FEATURE] = 1 + 2 * torch.rand(batch, tokens, generator=generator)
    noise = torch.randn(batch, tokens, D_MODEL, generator=generator) * 0.05
    return (codes @ sae.W_dec + sae.b_dec) / sae.input_scale + noise


def all_positions(count: int = 1, batch: int = 2, tokens: int = 4) -> torch.Tensor:
    return torch.ones(count, batch, tokens, dtype=torch.bool)


def feature(mode: SteeringMode, value: float = 0.0, index: int = FEATURE) -> Intervention:
    return Intervention(mode=mode, value=value, feature=index)


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_clamp_sets_the_feature_where_masked_only(scale):
    sae = tied_sae(scale)
    hidden = hidden_with_active_feature(sae)
    masks = torch.zeros(1, 2, 4, dtype=torch.bool)
    masks[0, 0, 1:3] = True
    masks[0, 1, 0] = True
    out = apply_interventions(hidden, sae, [feature(SteeringMode.CLAMP, 5.0)], masks)
    after, before = sae.encode(out), sae.encode(hidden)
    torch.testing.assert_close(after[masks[0]][:, FEATURE], torch.full((3,), 5.0))
    others = [i for i in range(D_SAE) if i != FEATURE]
    torch.testing.assert_close(after[masks[0]][:, others], before[masks[0]][:, others])
    assert torch.equal(out[~masks[0]], hidden[~masks[0]])


def test_add_zero_is_identity():
    sae = tied_sae()
    hidden = hidden_with_active_feature(sae)
    out = apply_interventions(hidden, sae, [feature(SteeringMode.ADD, 0.0)], all_positions())
    assert torch.equal(out, hidden)


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_add_moves_along_the_unit_decoder_row(scale):
    sae = tied_sae(scale)
    hidden = hidden_with_active_feature(sae)
    out = apply_interventions(hidden, sae, [feature(SteeringMode.ADD, 3.0)], all_positions())
    direction = sae.W_dec[FEATURE] / sae.W_dec[FEATURE].norm()
    torch.testing.assert_close(out - hidden, (3.0 * direction / scale).expand_as(hidden))
    gained = sae.encode(out)[..., FEATURE] - sae.encode(hidden)[..., FEATURE]
    torch.testing.assert_close(gained, torch.full((2, 4), 3.0))


def test_ablate_zeroes_the_feature():
    sae = tied_sae()
    hidden = hidden_with_active_feature(sae)
    out = apply_interventions(hidden, sae, [feature(SteeringMode.ABLATE)], all_positions())
    torch.testing.assert_close(sae.encode(out)[..., FEATURE], torch.zeros(2, 4))


def test_scale_multiplies_the_feature():
    sae = tied_sae(1.5)
    hidden = hidden_with_active_feature(sae)
    out = apply_interventions(hidden, sae, [feature(SteeringMode.SCALE, 2.5)], all_positions())
    before = sae.encode(hidden)[..., FEATURE]
    torch.testing.assert_close(sae.encode(out)[..., FEATURE], 2.5 * before)


def test_interventions_compose_as_a_sum_of_deltas_in_any_order():
    sae = tied_sae()
    hidden = hidden_with_active_feature(sae)
    direction = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(5))
    interventions = [
        feature(SteeringMode.CLAMP, 4.0),
        feature(SteeringMode.SCALE, 0.5, index=1),
        feature(SteeringMode.SCALE, 3.0),  # the same feature again: also from the unedited h
        Intervention(mode=SteeringMode.ABLATE, direction=direction),
    ]
    masks = torch.rand(4, 2, 4, generator=torch.Generator().manual_seed(6)) > 0.3
    combined = apply_interventions(hidden, sae, interventions, masks)
    deltas = [
        apply_interventions(hidden, sae, [iv], masks[index : index + 1]) - hidden
        for index, iv in enumerate(interventions)
    ]
    torch.testing.assert_close(combined, hidden + sum(deltas))
    reversed_out = apply_interventions(hidden, sae, interventions[::-1], masks.flip(0))
    torch.testing.assert_close(reversed_out, combined)


def test_per_row_masks():
    sae = tied_sae()
    hidden = hidden_with_active_feature(sae)
    masks = torch.zeros(1, 2, 4, dtype=torch.bool)
    masks[0, 1] = True
    out = apply_interventions(hidden, sae, [feature(SteeringMode.ABLATE)], masks)
    assert torch.equal(out[0], hidden[0])
    torch.testing.assert_close(sae.encode(out[1])[..., FEATURE], torch.zeros(4))


def test_raw_direction_add_and_ablate():
    sae = tied_sae()
    hidden = hidden_with_active_feature(sae)
    direction = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(3)) * 7
    unit = direction / direction.norm()
    add = Intervention(mode=SteeringMode.ADD, value=2.0, direction=direction)
    out = apply_interventions(hidden, None, [add], all_positions())
    torch.testing.assert_close(out - hidden, (2.0 * unit).expand_as(hidden))
    ablate = Intervention(mode=SteeringMode.ABLATE, direction=direction)
    out = apply_interventions(hidden, None, [ablate], all_positions())
    torch.testing.assert_close(out @ unit, torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out - hidden, -(hidden @ unit).unsqueeze(-1) * unit)


def test_raw_direction_clamp_and_scale():
    hidden = torch.randn(2, 4, D_MODEL, generator=torch.Generator().manual_seed(8))
    unit = torch.zeros(D_MODEL)
    unit[2] = 1.0
    clamp = Intervention(mode=SteeringMode.CLAMP, value=-1.5, direction=unit * 3)
    scale = Intervention(mode=SteeringMode.SCALE, value=2.0, direction=unit)
    clamped = apply_interventions(hidden, None, [clamp], all_positions())
    scaled = apply_interventions(hidden, None, [scale], all_positions())
    torch.testing.assert_close(clamped[..., 2], torch.full((2, 4), -1.5))
    torch.testing.assert_close(scaled[..., 2], 2 * hidden[..., 2])
    assert torch.equal(clamped[..., 3:], hidden[..., 3:])


def test_bfloat16_hidden():
    sae = tied_sae()
    hidden = hidden_with_active_feature(sae).to(torch.bfloat16)
    masks = torch.zeros(1, 2, 4, dtype=torch.bool)
    masks[0, 0] = True
    out = apply_interventions(hidden, sae, [feature(SteeringMode.CLAMP, 5.0)], masks)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[1], hidden[1])
    expected = apply_interventions(hidden.float(), sae, [feature(SteeringMode.CLAMP, 5.0)], masks)
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)
    assert apply_interventions(hidden, sae, [], torch.zeros(0, 2, 4, dtype=torch.bool)) is hidden


@pytest.mark.parametrize(
    ("intervention", "use_sae", "match"),
    [
        (feature(SteeringMode.CLAMP, index=D_SAE), True, "out of range"),
        (feature(SteeringMode.ADD, 1.0), False, "no SAE"),
        (Intervention(mode=SteeringMode.ADD, direction=torch.ones(D_MODEL + 1)), True, "length"),
        (Intervention(mode=SteeringMode.ADD, direction=torch.zeros(D_MODEL)), True, "non-zero"),
    ],
)
def test_invalid_interventions(intervention, use_sae, match):
    sae = tied_sae() if use_sae else None
    with pytest.raises(ValueError, match=match):
        validate_intervention(intervention, sae, D_MODEL)
    with pytest.raises(ValueError, match=match):
        apply_interventions(torch.zeros(2, 4, D_MODEL), sae, [intervention], all_positions())


def test_add_on_a_dead_feature_is_refused():
    sae = tied_sae()
    sae.W_dec[FEATURE] = 0
    with pytest.raises(ValueError, match="zero decoder row"):
        validate_intervention(feature(SteeringMode.ADD, 1.0), sae, D_MODEL)


def test_sae_of_another_width_is_refused():
    with pytest.raises(ValueError, match="d_model"):
        validate_intervention(feature(SteeringMode.ADD, 1.0), tied_sae(), D_MODEL * 2)


@pytest.mark.parametrize(
    "masks",
    [
        torch.ones(2, 2, 4, dtype=torch.bool),  # two masks for one intervention
        torch.ones(1, 2, 5, dtype=torch.bool),
        torch.ones(1, 2, 4, dtype=torch.float32),
    ],
)
def test_mask_mismatch(masks):
    with pytest.raises(ValueError, match="masks must be"):
        apply_interventions(
            torch.zeros(2, 4, D_MODEL), tied_sae(), [feature(SteeringMode.ADD)], masks
        )
