"""Train the world's small MAIRA-2 to write the findings of synthetic studies, on CPU.

Teacher forcing through the project's own model class and processor: each study is rendered
with MAIRA-2's real prompt (``Maira2Processor.process`` with the findings as the response) and
the loss is next-token cross-entropy on the response tokens and the closing ``</s>`` only,
computed at those positions alone and through ``ReportHead`` (an exact, cheaper form of the
32207-way head).

Bit-for-bit reproducible on one torch build: fixed seeds, deterministic algorithms, a fixed
thread count, and a data order drawn from the seed. ``python -m
maira_sae.server.demo.world.train_model`` trains and prints progress and the held-out concept F1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from maira_sae.server.demo.snapshot import write_snapshot_files
from maira_sae.server.demo.world.evaluation import ConceptScores, greedy_reports, score_reports
from maira_sae.server.demo.world.model_spec import PREPROCESSING, world_config, world_config_dict
from maira_sae.server.demo.world.studies import WorldStudy, world_dataset
from maira_sae.server.maira2.checkpoint import build_empty_model
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor, ModelInputs
from maira_sae.server.maira2.study import Task


@dataclass(frozen=True)
class TrainingSettings:
    """Defaults are the shipped artifact's run."""

    train_studies: int = 1000
    eval_studies: int = 100
    steps: int = 1500
    batch_size: int = 12
    learning_rate: float = 3e-3
    warmup_steps: int = 40
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 1
    data_seed: int = 1000  # the training studies; evaluation uses data_seed + 1


@dataclass(frozen=True)
class TrainingResult:
    model: Maira2ForConditionalGeneration  # eval mode, weights rounded to float16 values
    losses: tuple[float, ...]
    scores: ConceptScores | None


def make_processor(folder: Path) -> Maira2Processor:
    """Write the world model's snapshot files but the weights into ``folder``; its processor."""
    write_snapshot_files(folder, world_config_dict(), PREPROCESSING)
    return load_processor(folder)


def load_processor(snapshot: Path) -> Maira2Processor:
    """The processor of a world model snapshot (a folder with its tokenizer and configs)."""
    return Maira2Processor.for_model(snapshot, world_config())


def generation_aligned(processor: Maira2Processor, study: WorldStudy) -> ModelInputs:
    """The study's findings teacher-forced the way the model will meet them when generating.

    MAIRA-2's generation prompt ends in "ASSISTANT: ", whose trailing space tokenises as a lone
    "▁"; with the response in the template that space is merged into the response's first
    piece ("▁No") instead. A model trained only on the second form meets an unseen token when
    it generates, and writes nonsense. So training sequences are the generation prompt followed
    by the teacher-forced response pieces; decoding them gives back the findings.
    """
    prompt = processor.process(study.to_study(), Task())
    forced = processor.process(study.to_study(), Task(), study.findings)
    response = forced.input_ids[forced.prompt_length :]
    return dataclasses.replace(
        prompt,
        input_ids=torch.cat([prompt.input_ids, response]),
        tokens=(),  # per-token kinds are not needed to train
    )


@contextlib.contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seed torch and pin what makes CPU work reproducible bit for bit: deterministic
    algorithms and a fixed thread count (both restored on exit)."""
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def initial_model(seed: int) -> Maira2ForConditionalGeneration:
    """transformers' own initialisation of the world model, under ``seed``."""
    torch.manual_seed(seed)
    model = build_empty_model(world_config(), device="cpu", dtype=torch.float32)
    model.init_weights()
    return model


def train(
    settings: TrainingSettings,
    processor: Maira2Processor,
    *,
    evaluate: bool = True,
    log: Callable[[str], None] = print,
) -> TrainingResult:
    """Train from scratch; with ``evaluate``, score greedy reports on held-out studies.

    The returned model's weights are rounded to float16 (what the artifact stores), so the
    score is the shipped model's.
    """
    with deterministic(settings.seed, settings.threads):
        return _train(settings, processor, evaluate=evaluate, log=log)


def _train(
    settings: TrainingSettings,
    processor: Maira2Processor,
    *,
    evaluate: bool,
    log: Callable[[str], None],
) -> TrainingResult:
    started = time.perf_counter()
    studies = world_dataset(settings.train_studies, settings.data_seed)
    log(f"{len(studies)} training studies in {time.perf_counter() - started:.0f} s")

    def teacher_forced(study: WorldStudy) -> ModelInputs:
        return generation_aligned(processor, study)

    examples = [teacher_forced(study) for study in studies]
    model = initial_model(settings.seed).train()
    head = ReportHead(model, [int(i) for e in examples for i in e.input_ids[e.prompt_length :]])
    parameters = [*model.parameters(), head.rest]
    optimizer = torch.optim.AdamW(
        parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(settings))
    losses: list[float] = []
    order = _batches([len(example.input_ids) for example in examples], settings)
    del examples  # their pixels would hold a few hundred MB; a batch is rebuilt when needed
    for step in range(settings.steps):
        batch = [teacher_forced(studies[i]) for i in next(order)]
        loss = response_loss(model, head, batch, processor.pad_token_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == settings.steps - 1:
            recent = sum(losses[-25:]) / len(losses[-25:])
            log(f"step {step:4d}  loss {recent:.3f}  {time.perf_counter() - started:.0f} s")
    head.fold_into(model)
    model = _rounded_to_float16(model.eval())
    scores = None
    if evaluate:
        held_out = world_dataset(settings.eval_studies, settings.data_seed + 1)
        scores = evaluate_model(model, processor, held_out)
        log(f"held-out concept F1 (micro) {scores.micro_f1:.3f}: {scores.describe()}")
    log(f"done in {time.perf_counter() - started:.0f} s")
    return TrainingResult(model, tuple(losses), scores)


def evaluate_model(
    model: Maira2ForConditionalGeneration,
    processor: Maira2Processor,
    studies: Sequence[WorldStudy],
) -> ConceptScores:
    reports = greedy_reports(model, processor, [study.to_study() for study in studies])
    return score_reports(reports, [study.concepts for study in studies])


class ReportHead(nn.Module):
    """The lm_head as training sees it: the rows of the tokens reports use, and one shared row
    for the other ~32000 tokens.

    Tying those rows is exact, not an approximation: with ``count`` identical rows ``r``, the
    full softmax's normaliser is ``sum over report tokens exp(w.h) + count * exp(r.h)``, which
    is what the loss computes. Training this way skips most of the 32207-way head (a third of
    the step) and ``fold_into`` writes ``r`` into every other row, so the saved model's full
    head gives the same probabilities.
    """

    def __init__(self, model: Maira2ForConditionalGeneration, vocabulary: Sequence[int]) -> None:
        super().__init__()
        self.weight = model.lm_head.weight
        self.register_buffer("vocabulary", torch.tensor(sorted(set(vocabulary))))
        self.rest = nn.Parameter(torch.zeros(self.weight.shape[1]))
        self.log_rest_count = math.log(self.weight.shape[0] - len(self.vocabulary))
        self._index = torch.full((self.weight.shape[0],), -1, dtype=torch.long)
        self._index[self.vocabulary] = torch.arange(len(self.vocabulary))

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of next tokens ``targets`` (all in the vocabulary) from
        ``hidden`` [n, d]."""
        logits = torch.cat(
            [hidden @ self.weight[self.vocabulary].T, (hidden @ self.rest)[:, None]], dim=1
        )
        logits[:, -1] += self.log_rest_count
        return functional.cross_entropy(logits, self._index[targets])

    @torch.no_grad()
    def fold_into(self, model: Maira2ForConditionalGeneration) -> None:
        others = torch.ones(self.weight.shape[0], dtype=torch.bool)
        others[self.vocabulary] = False
        model.lm_head.weight[others] = self.rest


def response_loss(
    model: Maira2ForConditionalGeneration,
    head: ReportHead,
    batch: Sequence[ModelInputs],
    pad_token_id: int,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the response tokens (and ``</s>``) of a batch of
    teacher-forced inputs, right-padded into one forward pass."""
    length = max(len(inputs.input_ids) for inputs in batch)
    input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    rows, positions = [], []
    for row, inputs in enumerate(batch):
        size = len(inputs.input_ids)
        input_ids[row, :size] = inputs.input_ids
        attention_mask[row, :size] = 1
        rows += [row] * (size - inputs.prompt_length)
        positions += range(inputs.prompt_length, size)
    hidden = model.model(
        input_ids=input_ids,
        pixel_values=torch.cat([inputs.pixel_values for inputs in batch]),
        attention_mask=attention_mask,
    ).last_hidden_state
    rows_t, targets_t = torch.tensor(rows), torch.tensor(positions)
    return head.loss(hidden[rows_t, targets_t - 1], input_ids[rows_t, targets_t])


def _batches(lengths: Sequence[int], settings: TrainingSettings) -> Iterator[list[int]]:
    """Epochs of study indices from the seed, each batch of similar lengths (studies differ
    mostly by their number of images), so little of a batch is padding."""
    rng = np.random.default_rng(settings.seed)
    size = settings.batch_size
    while True:
        order = rng.permutation(len(lengths))
        order = order[np.argsort(np.asarray(lengths)[order], kind="stable")]
        batches = [order[i : i + size].tolist() for i in range(0, len(order) - size + 1, size)]
        for index in rng.permutation(len(batches)):
            yield batches[index]


def _warmup_cosine(settings: TrainingSettings) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(settings.steps - settings.warmup_steps, 1)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _rounded_to_float16(
    model: Maira2ForConditionalGeneration,
) -> Maira2ForConditionalGeneration:
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    return model


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=TrainingSettings.steps)
    parser.add_argument("--train-studies", type=int, default=TrainingSettings.train_studies)
    parser.add_argument("--eval-studies", type=int, default=TrainingSettings.eval_studies)
    parser.add_argument("--work-dir", type=Path, default=Path(".cache/world-train"))
    args = parser.parse_args(argv)
    settings = TrainingSettings(
        steps=args.steps, train_studies=args.train_studies, eval_studies=args.eval_studies
    )
    train(settings, make_processor(args.work_dir))


if __name__ == "__main__":
    main()
