"""The Matryoshka BatchTopK trainer on small data with a planted sparse structure."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from maira_sae.sae import load_sae, write_dictionary_learning
from maira_sae.sae.training import (
    CHECKPOINT_FILE,
    MatryoshkaTrainingConfig,
    default_group_sizes,
    geometric_median,
    train_matryoshka_sae,
)

D_MODEL, TRUE_FEATURES, K = 16, 48, 3
L0_TOLERANCE = 0.5  # inference L0 (learned threshold, no batch top-k) within k * (1 +- this)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planted() -> torch.Tensor:
    return planted_activations()


def planted_activations() -> torch.Tensor:
    """4000 tokens, each a sum of about K of 48 unit directions with magnitudes 0.5..2.5, plus
    a constant offset and a little noise."""
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(TRUE_FEATURES, D_MODEL, generator=generator)
    directions /= directions.norm(dim=1, keepdim=True)
    active = torch.rand(4000, TRUE_FEATURES, generator=generator) < K / TRUE_FEATURES
    magnitudes = torch.rand(4000, TRUE_FEATURES, generator=generator) * 2 + 0.5
    noise = 0.02 * torch.randn(4000, D_MODEL, generator=generator)
    return (active * magnitudes) @ directions + noise + 1.0


def config(**overrides: object) -> MatryoshkaTrainingConfig:
    settings: dict = {
        "d_model": D_MODEL,
        "group_sizes": (8, 16, 40),
        "k": K,
        "steps": 150,
        "batch_size": 128,
        "lr": 3e-3,
        "warmup_steps": 10,
        "threshold_start_step": 50,
        "threshold_decay": 0.95,
        "dead_after_tokens": 3000,
        "eval_tokens": 2000,
    }
    return MatryoshkaTrainingConfig(**{**settings, **overrides})


def test_training_lowers_reconstruction_error_and_keeps_l0_near_k(planted):
    _, first = train_matryoshka_sae(planted, config(steps=1), progress=False)
    sae, report = train_matryoshka_sae(planted, config(), progress=False)
    trained = report.evaluation
    assert trained.mse < 0.5 * first.evaluation.mse
    assert trained.explained_variance > 0.5
    assert K * (1 - L0_TOLERANCE) <= trained.l0 <= K * (1 + L0_TOLERANCE)
    assert trained.dead_fraction < 0.1 and report.train_dead_fraction < 0.1  # measured: 0, 0
    levels = trained.level_explained_variance
    assert len(levels) == 3 and levels[0] < levels[1] < levels[2] == trained.explained_variance
    assert sae.threshold is not None and sae.top_k is None  # serves with the learned threshold
    assert float(sae.threshold) == pytest.approx(report.threshold)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae), atol=1e-5)
    assert report.steps == 150 and report.tokens_seen == 150 * 128


def test_training_is_deterministic_for_a_seed(planted):
    first, _ = train_matryoshka_sae(planted, config(steps=30), progress=False)
    second, _ = train_matryoshka_sae(planted, config(steps=30), progress=False)
    other, _ = train_matryoshka_sae(planted, config(steps=30, seed=1), progress=False)
    assert all(
        torch.equal(first.state_dict()[n], second.state_dict()[n]) for n in ("W_enc", "b_enc")
    )
    assert not torch.equal(first.W_enc, other.W_enc)


def test_resume_continues_exactly_where_the_checkpoint_left_off(planted, tmp_path):
    straight, _ = train_matryoshka_sae(
        planted,
        config(steps=40, checkpoint_dir=tmp_path / "a", checkpoint_every=20),
        progress=False,
    )
    interrupted = config(steps=20, checkpoint_dir=tmp_path / "b", checkpoint_every=20)
    train_matryoshka_sae(planted, interrupted, progress=False)
    assert (tmp_path / "b" / CHECKPOINT_FILE).is_file()
    resumed, report = train_matryoshka_sae(
        planted, dataclasses.replace(interrupted, steps=40), progress=False
    )
    assert report.resumed_from_step == 20 and report.steps == 40
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_resume_refuses_a_checkpoint_of_other_settings(planted, tmp_path):
    train_matryoshka_sae(planted, config(steps=5, checkpoint_dir=tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"other settings.*'k'"):
        train_matryoshka_sae(
            planted, config(steps=10, k=4, checkpoint_dir=tmp_path), progress=False
        )
    _, report = train_matryoshka_sae(
        planted, config(steps=5, k=4, checkpoint_dir=tmp_path), progress=False, resume=False
    )
    assert report.resumed_from_step == 0


def test_trained_sae_writes_a_dictionary_learning_folder_that_loads(planted, tmp_path):
    sae, _ = train_matryoshka_sae(
        planted,
        config(steps=60, layer=15, lm_name="toy", submodule_name="layers.15"),
        progress=False,
    )
    folder = write_dictionary_learning(sae, tmp_path / "sae")
    trainer = json.loads((folder / "config.json").read_text())["trainer"]
    assert trainer["dict_class"] == "MatryoshkaBatchTopKSAE"
    assert (trainer["k"], trainer["group_sizes"], trainer["layer"]) == (K, [8, 16, 40], 15)
    assert (trainer["lm_name"], trainer["submodule_name"]) == ("toy", "layers.15")
    loaded = load_sae(folder)
    assert torch.equal(loaded.threshold, sae.threshold)
    assert torch.equal(loaded.encode(planted[:50]), sae.encode(planted[:50]))


def test_normalisation_is_folded_into_the_saved_sae(planted):
    """Training on 10x the activations gives the same codes scaled by 10: the returned SAE
    reads raw activations whatever their scale."""
    small, _ = train_matryoshka_sae(planted, config(steps=60), progress=False)
    large, _ = train_matryoshka_sae(planted * 10, config(steps=60), progress=False)
    assert torch.allclose(
        large.encode(planted[:50] * 10), small.encode(planted[:50]) * 10, atol=1e-3
    )


def test_geometric_median_resists_an_outlier():
    points = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])  # in 1-D it is the median
    assert geometric_median(points).item() == pytest.approx(2.0, abs=0.05)


def test_config_checks_and_defaults():
    assert sum(default_group_sizes(4096)) == 4096 and default_group_sizes(4096)[0] == 256
    assert config(lr=None, group_sizes=(8192, 8192)).learning_rate == pytest.approx(2e-4)
    with pytest.raises(ValueError, match="k must be"):
        config(k=100)
    with pytest.raises(ValueError, match=r"expected activations \[N >= 2, 16\]"):
        train_matryoshka_sae(torch.zeros(10, 8), config(), progress=False)
