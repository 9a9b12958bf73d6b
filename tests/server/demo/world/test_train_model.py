"""Training the world model: it learns, it is bit-for-bit reproducible, its head trick is exact."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from maira_sae.server.demo.world.studies import generate_study
from maira_sae.server.demo.world.train_model import (
    ReportHead,
    TrainingSettings,
    generation_aligned,
    initial_model,
    train,
)
from maira_sae.server.maira2.study import Task

TINY = TrainingSettings(train_studies=6, steps=6, batch_size=3, warmup_steps=1, eval_studies=0)


@pytest.fixture(scope="module")
def tiny_runs(world_processor, one_torch_thread):
    return [train(TINY, world_processor, evaluate=False, log=lambda _line: None) for _ in range(2)]


def test_a_tiny_run_reduces_the_loss(tiny_runs):
    losses = tiny_runs[0].losses
    assert len(losses) == TINY.steps
    assert sum(losses[-2:]) / 2 < losses[0] - 0.2, losses


def test_a_tiny_run_is_bit_for_bit_reproducible(tiny_runs):
    first, second = (run.model.state_dict() for run in tiny_runs)
    assert tiny_runs[0].losses == tiny_runs[1].losses
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_the_report_head_equals_the_full_head_once_folded(one_torch_thread):
    model = initial_model(seed=3)
    vocabulary = [2, 7, 500, 29871, 32000]
    head = ReportHead(model, vocabulary)
    with torch.no_grad():
        head.rest.normal_()
    hidden = torch.randn(5, model.hidden_size)
    targets = torch.tensor([2, 7, 7, 500, 32000])
    loss = head.loss(hidden, targets)
    head.fold_into(model)
    full = functional.cross_entropy(model.lm_head(hidden), targets)
    torch.testing.assert_close(loss, full)


def test_training_sequences_continue_the_generation_prompt(world_processor):
    study = generate_study(9, with_prior=True)
    aligned = generation_aligned(world_processor, study)
    prompt = world_processor.process(study.to_study(), Task())
    assert torch.equal(aligned.input_ids[: aligned.prompt_length], prompt.input_ids)
    response = aligned.input_ids[aligned.prompt_length :].tolist()
    assert response[-1] == world_processor.eos_token_id
    assert world_processor.decode_generated(response) == study.findings
