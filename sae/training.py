"""Train a Matryoshka BatchTopK SAE the way dictionary_learning's ``MatryoshkaBatchTopKTrainer``
does, and hand back the ``MatryoshkaSAE`` the server loads.

The rules, each as that library has them:

- Encode for training with *batch* top-k: relu((x - b_dec) @ W_enc + b_enc), then keep the
  ``k * batch`` largest activations of the whole batch (a token may get more or fewer than k).
- Loss: for each Matryoshka level g, the squared error of the reconstruction from the first g
  groups (summed over dimensions, averaged over tokens), weighted by ``group_weights`` (1/G each
  by default) and summed; plus ``aux_coeff`` times the auxiliary loss.
- Auxiliary loss (dead features): features that have not fired for ``dead_after_tokens`` tokens
  reconstruct the main reconstruction's residual with their own top-``aux_k`` activations; the
  error is divided by the residual's variance.
- Decoder rows are unit norm: the gradient's component along each row is removed before the
  step and the rows are renormalised after it. Gradients are clipped to norm ``grad_clip``.
- Initialisation: random unit decoder rows, ``W_enc = W_dec.T``, ``b_enc = 0``, ``b_dec`` the
  geometric median of the first batch. Adam, linear warm-up, optional linear decay to 0.
- The inference threshold is the running mean (decay ``threshold_decay``, from step
  ``threshold_start_step``) of the smallest positive activation that batch top-k kept.
- With ``normalize_activations`` the activations are scaled by sqrt(d_model) / mean norm while
  training and the scale is folded into ``b_enc``, ``b_dec`` and the threshold at the end, so the
  returned SAE reads raw activations (as dictionary_learning saves it).

The activations are a tensor or an activation store (``maira_sae.sae.activation_store``), read
through a shuffle buffer of ``shuffle_buffer_gb`` (``maira_sae.sae.activation_stream``): with a
bound, memory holds one window of the data, never the store. No random numbers are drawn after
initialisation: batch ``s`` is a pure function of the seed, the window size and ``s``, so a
checkpoint (parameters, Adam state, threshold, dead-feature counters, step, and the stream
position for the record) resumes bit-identically on CPU, mid-epoch too, without RNG state.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maira_sae.sae.activation_stream import (
    RowSource,
    ShuffledStream,
    as_row_source,
    window_rows_for,
)
from maira_sae.sae.evaluation import SaeEvaluation, evaluate_sae
from maira_sae.sae.model import UNSET_THRESHOLD, MatryoshkaSAE, SaeMetadata

CHECKPOINT_FILE = "trainer_state.pt"
DICT_CLASS = "MatryoshkaBatchTopKSAE"
DEFAULT_GROUP_FRACTIONS = (1 / 16, 1 / 8, 1 / 4)  # the rest of the dictionary is the last group
_CHECKPOINT_FORMAT = 2
# Settings that define a run: a checkpoint resumes only under the same ones.
_RUN_DEFINING = (
    "d_model",
    "group_sizes",
    "k",
    "batch_size",
    "lr",
    "warmup_steps",
    "decay_start",
    "aux_k",
    "aux_coeff",
    "dead_after_tokens",
    "threshold_decay",
    "threshold_start_step",
    "group_weights",
    "normalize_activations",
    "grad_clip",
    "seed",
    "shuffle_buffer_gb",
)


def default_group_sizes(d_sae: int) -> tuple[int, ...]:
    """Nested groups of 1/16, 1/8, 1/4 and the remaining 9/16 of the dictionary."""
    sizes = [max(1, int(fraction * d_sae)) for fraction in DEFAULT_GROUP_FRACTIONS]
    return (*sizes, d_sae - sum(sizes))


@dataclass(frozen=True)
class MatryoshkaTrainingConfig:
    """One training run. ``lr=None`` uses dictionary_learning's rule 2e-4 / sqrt(d_sae / 2^14);
    ``aux_k=None`` uses d_model // 2. ``layer``, ``lm_name`` and ``submodule_name`` only describe
    the activations (they go into the SAE's metadata and config.json). ``shuffle_buffer_gb``
    bounds the rows held for shuffling (``None``: all of them)."""

    d_model: int
    group_sizes: tuple[int, ...]
    k: int
    steps: int
    batch_size: int = 4096
    lr: float | None = None
    warmup_steps: int = 1000
    decay_start: int | None = None
    aux_k: int | None = None
    aux_coeff: float = 1 / 32
    dead_after_tokens: int = 10_000_000
    threshold_decay: float = 0.999
    threshold_start_step: int = 1000
    group_weights: tuple[float, ...] | None = None
    normalize_activations: bool = True
    grad_clip: float = 1.0
    seed: int = 0
    shuffle_buffer_gb: float | None = None
    device: str = "cpu"
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 1000
    eval_tokens: int = 200_000
    layer: int | None = None
    lm_name: str | None = None
    submodule_name: str | None = None

    def __post_init__(self) -> None:
        if not self.group_sizes or any(size < 1 for size in self.group_sizes):
            raise ValueError(f"group_sizes must be positive sizes, got {self.group_sizes}")
        if not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae = {self.d_sae}, got {self.k}")
        for name in ("d_model", "steps", "batch_size", "checkpoint_every", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_weights is not None and len(self.group_weights) != len(self.group_sizes):
            raise ValueError("group_weights needs one weight per group")
        if self.shuffle_buffer_gb is not None and self.shuffle_buffer_gb <= 0:
            raise ValueError(f"shuffle_buffer_gb must be > 0, got {self.shuffle_buffer_gb}")
        if not 0 <= self.threshold_decay < 1:
            raise ValueError(f"threshold_decay must be in [0, 1), got {self.threshold_decay}")

    @property
    def d_sae(self) -> int:
        return sum(self.group_sizes)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.d_sae / 2**14)

    @property
    def auxiliary_k(self) -> int:
        return self.aux_k if self.aux_k is not None else max(1, self.d_model // 2)

    @property
    def weights(self) -> tuple[float, ...]:
        n = len(self.group_sizes)
        return self.group_weights if self.group_weights is not None else (1.0 / n,) * n

    def lr_factor(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then 1, then linear decay to 0 from
        ``decay_start`` to ``steps``."""
        factor = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.decay_start is not None and step >= self.decay_start:
            factor *= max(0.0, (self.steps - step) / max(1, self.steps - self.decay_start))
        return factor


# What each dead fraction of a report counts; written into training_report.json beside them.
DEAD_FRACTION_DEFINITIONS = {
    "train_dead_fraction": (
        "features that training's batch top-k did not select once in the last "
        "train_dead_window_tokens training tokens (dead_after_tokens, or every token of a run "
        "that saw fewer): the features the auxiliary loss was reviving"
    ),
    "evaluation.dead_fraction": (
        "features of the returned SAE that never pass the inference threshold, as served, on "
        "the evaluation.tokens tokens evaluated: higher than train_dead_fraction by the "
        "features that batch top-k, whose cut-off varies from batch to batch, selected only "
        "below the threshold (the cut-off's running mean), or only with earlier weights"
    ),
}


@dataclass(frozen=True)
class TrainingReport:
    """What a run did and how the returned SAE does on (up to ``eval_tokens`` of) the data.

    The two dead fractions count different things (``DEAD_FRACTION_DEFINITIONS``):
    ``train_dead_fraction`` the features batch top-k did not select in the last
    ``train_dead_window_tokens`` training tokens, ``evaluation.dead_fraction`` those that never
    pass the inference threshold on the evaluated tokens: what serving sees."""

    steps: int
    tokens_seen: int
    resumed_from_step: int
    final_loss: float
    threshold: float
    input_scale: float
    train_dead_fraction: float
    train_dead_window_tokens: int
    evaluation: SaeEvaluation
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            **dataclasses.asdict(self),
            "evaluation": self.evaluation.to_dict(),
            "dead_fraction_definitions": DEAD_FRACTION_DEFINITIONS,
        }


class _TrainableSae(nn.Module):
    """The parameters in dictionary_learning's layout (W_enc [d_model, F], W_dec [F, d_model])."""

    def __init__(self, d_model: int, d_sae: int) -> None:
        super().__init__()
        self.W_enc = nn.Parameter(torch.zeros(d_model, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_model))
        self.b_dec = nn.Parameter(torch.zeros(d_model))


@dataclass
class _State:
    """Everything a checkpoint holds; the module and optimizer live on the training device."""

    sae: _TrainableSae
    optimizer: torch.optim.Adam
    step: int
    threshold: float  # in the normalised space; -1 until set
    tokens_since_fired: torch.Tensor
    input_scale: float
    recent_losses: list[float]


def train_matryoshka_sae(
    activations: torch.Tensor | Iterable[torch.Tensor] | RowSource,
    config: MatryoshkaTrainingConfig,
    *,
    progress: bool = True,
    resume: bool = True,
) -> tuple[MatryoshkaSAE, TrainingReport]:
    """Train on ``activations`` ([N, d_model], chunks of it that are concatenated in memory, or
    a row source such as a ``StoreReader``) and return the SAE (scalar learned threshold,
    raw-activation space) and a report.

    With ``config.checkpoint_dir`` a checkpoint is written every ``checkpoint_every`` steps and
    at the end; with ``resume`` a checkpoint found there is continued (its run-defining settings
    must match; ``steps`` may grow). Training, the final evaluation and the returned SAE are on
    ``config.device``; the data stays where it is and each batch is moved there.
    """
    started = time.perf_counter()
    source = as_row_source(activations)
    if source.d_model != config.d_model:
        raise ValueError(
            f"expected activations [N >= 2, {config.d_model}], "
            f"got [{len(source)}, {source.d_model}]"
        )
    window_rows = window_rows_for(source, config.shuffle_buffer_gb, config.batch_size)
    stream = ShuffledStream(source, config.batch_size, config.seed, window_rows)
    checkpoint = _checkpoint_path(config)
    if resume and checkpoint is not None and checkpoint.exists():
        state = _load_state(checkpoint, config, stream)
    else:
        state = _initial_state(stream, config)
    resumed_from = state.step
    bar = _ProgressBar(config.steps, resumed_from, enabled=progress)
    for step in range(state.step, config.steps):
        batch = stream.batch(step).to(device=config.device, dtype=torch.float32)
        loss = _training_step(state, batch * state.input_scale, config)
        state.step = step + 1
        state.recent_losses = [*state.recent_losses[-99:], loss]
        if checkpoint is not None and state.step % config.checkpoint_every == 0:
            _save_state(checkpoint, state, config, stream)
        bar.update(loss, state.threshold / state.input_scale)
    bar.close()
    if checkpoint is not None and state.step % config.checkpoint_every != 0:
        _save_state(checkpoint, state, config, stream)
    sae = _served_sae(state, config)
    sample = stream.rows(_evaluation_rows(len(source), config))
    tokens_seen = state.step * config.batch_size
    # A run shorter than dead_after_tokens counts the features silent all along, not none.
    dead_window = min(config.dead_after_tokens, tokens_seen)
    report = TrainingReport(
        steps=state.step,
        tokens_seen=tokens_seen,
        resumed_from_step=resumed_from,
        final_loss=sum(state.recent_losses) / max(1, len(state.recent_losses)),
        threshold=float(sae.threshold) if sae.threshold is not None else UNSET_THRESHOLD,
        input_scale=state.input_scale,
        train_dead_fraction=float((state.tokens_since_fired >= dead_window).float().mean()),
        train_dead_window_tokens=dead_window,
        evaluation=evaluate_sae(sae, sample),
        seconds=time.perf_counter() - started,
    )
    return sae, report


def _initial_state(stream: ShuffledStream, config: MatryoshkaTrainingConfig) -> _State:
    generator = torch.Generator().manual_seed(config.seed)
    input_scale = _input_scale(stream, config) if config.normalize_activations else 1.0
    sae = _TrainableSae(config.d_model, config.d_sae)
    with torch.no_grad():
        decoder = torch.rand(config.d_sae, config.d_model, generator=generator) * 2 - 1
        sae.W_dec.copy_(decoder / decoder.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        first_batch = stream.batch(0).float() * input_scale
        sae.b_dec.copy_(geometric_median(first_batch))
    sae.to(config.device)
    return _State(
        sae=sae,
        optimizer=torch.optim.Adam(sae.parameters(), lr=config.learning_rate, betas=(0.9, 0.999)),
        step=0,
        threshold=UNSET_THRESHOLD,
        tokens_since_fired=torch.zeros(config.d_sae, dtype=torch.long, device=config.device),
        input_scale=input_scale,
        recent_losses=[],
    )


def _input_scale(stream: ShuffledStream, config: MatryoshkaTrainingConfig) -> float:
    """sqrt(d_model) / mean norm, over up to ``eval_tokens`` rows (dictionary_learning's rule)."""
    norms = stream.rows(_evaluation_rows(len(stream.source), config)).float().norm(dim=1)
    return math.sqrt(config.d_model) / float(norms.mean())


def _evaluation_rows(n: int, config: MatryoshkaTrainingConfig) -> torch.Tensor:
    """A seeded sample of up to ``eval_tokens`` rows, in order."""
    if n <= config.eval_tokens:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(config.seed + 1)
    return torch.randperm(n, generator=generator)[: config.eval_tokens].sort().values


def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Weiszfeld's iteration from the mean, as dictionary_learning initialises ``b_dec``."""
    guess = points.mean(dim=0)
    for _ in range(max_iter):
        distances = (points - guess).norm(dim=1).clamp_min(1e-12)
        weights = 1 / distances
        previous, guess = guess, (weights[:, None] * points).sum(dim=0) / weights.sum()
        if float((guess - previous).norm()) < tol:
            break
    return guess


def _training_step(state: _State, x: torch.Tensor, config: MatryoshkaTrainingConfig) -> float:
    sae = state.sae
    post_relu = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    f = _batch_top_k(post_relu, config.k)
    if state.step >= config.threshold_start_step:
        state.threshold = _updated_threshold(state.threshold, f, config.threshold_decay)

    reconstruction = sae.b_dec.expand_as(x)
    loss = x.new_zeros(())
    boundaries = [0, *torch.tensor(config.group_sizes).cumsum(0).tolist()]
    for group, weight in enumerate(config.weights):
        start, end = boundaries[group], boundaries[group + 1]
        reconstruction = reconstruction + f[:, start:end] @ sae.W_dec[start:end]
        loss = loss + weight * (x - reconstruction).pow(2).sum(dim=-1).mean()

    fired = (f > 0).any(dim=0)
    state.tokens_since_fired += x.shape[0]
    state.tokens_since_fired[fired] = 0
    dead = state.tokens_since_fired >= config.dead_after_tokens
    if bool(dead.any()):
        residual = (x - reconstruction).detach()
        auxiliary = _auxiliary_loss(residual, post_relu, dead, sae.W_dec, config.auxiliary_k)
        loss = loss + config.aux_coeff * auxiliary

    loss.backward()
    _project_out_parallel_gradient(sae.W_dec)
    nn.utils.clip_grad_norm_(sae.parameters(), config.grad_clip)
    for group in state.optimizer.param_groups:
        group["lr"] = config.learning_rate * config.lr_factor(state.step)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
    return float(loss.detach())


def _batch_top_k(post_relu: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k * batch`` largest activations of the whole batch, zero the rest."""
    flat = post_relu.flatten()
    top = flat.topk(min(k * post_relu.shape[0], flat.numel()), sorted=False)
    return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(post_relu.shape)


def _updated_threshold(threshold: float, f: torch.Tensor, decay: float) -> float:
    """Running mean of the smallest positive activation batch top-k kept."""
    active = f.detach()[f.detach() > 0]
    minimum = float(active.min()) if active.numel() else 0.0
    return minimum if threshold < 0 else decay * threshold + (1 - decay) * minimum


def _auxiliary_loss(
    residual: torch.Tensor,
    post_relu: torch.Tensor,
    dead: torch.Tensor,
    decoder: torch.Tensor,
    aux_k: int,
) -> torch.Tensor:
    """Dead features' top-``aux_k`` reconstruction of the residual, over its variance."""
    k_aux = min(aux_k, int(dead.sum()))
    candidates = torch.where(dead[None], post_relu, torch.full_like(post_relu, -torch.inf))
    top = candidates.topk(k_aux, dim=-1, sorted=False)
    codes = torch.zeros_like(post_relu).scatter(-1, top.indices, top.values)
    error = (codes @ decoder - residual).pow(2).sum(dim=-1).mean()
    variance = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean()
    return torch.nan_to_num(error / variance, nan=0.0, posinf=0.0)


def _project_out_parallel_gradient(decoder: nn.Parameter) -> None:
    """Remove from each decoder row's gradient its component along the (unit) row."""
    if decoder.grad is None:
        return
    with torch.no_grad():
        unit = decoder / decoder.norm(dim=1, keepdim=True)
        decoder.grad -= (decoder.grad * unit).sum(dim=1, keepdim=True) * unit


def _served_sae(state: _State, config: MatryoshkaTrainingConfig) -> MatryoshkaSAE:
    """The trained SAE in raw-activation space: the input scale folded into the biases and the
    threshold (f_raw = f_normalised / scale, exactly)."""
    sae, scale = state.sae, state.input_scale
    return MatryoshkaSAE(
        W_enc=sae.W_enc.detach(),
        b_enc=sae.b_enc.detach() / scale,
        W_dec=sae.W_dec.detach(),
        b_dec=sae.b_dec.detach() / scale,
        group_sizes=config.group_sizes,
        threshold=torch.tensor(
            state.threshold / scale if state.threshold >= 0 else UNSET_THRESHOLD,
            device=sae.W_enc.device,
        ),
        top_k=config.k,
        metadata=SaeMetadata(
            layer=config.layer,
            hook_point=config.submodule_name,
            source_format="memory",
            path=None,
            lm_name=config.lm_name,
            dict_class=DICT_CLASS,
            k=config.k,
        ),
    )


def _checkpoint_path(config: MatryoshkaTrainingConfig) -> Path | None:
    return None if config.checkpoint_dir is None else Path(config.checkpoint_dir) / CHECKPOINT_FILE


def _run_settings(config: MatryoshkaTrainingConfig, stream: ShuffledStream) -> dict[str, Any]:
    settings = {name: getattr(config, name) for name in _RUN_DEFINING}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    return {
        **settings,
        "num_activations": len(stream.source),
        "window_rows": stream.window_rows,
        "data": getattr(stream.source, "fingerprint", None),
    }


def _save_state(
    path: Path, state: _State, config: MatryoshkaTrainingConfig, stream: ShuffledStream
) -> None:
    """Written to a temporary file and renamed, so a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "format": _CHECKPOINT_FORMAT,
        "run": _run_settings(config, stream),
        "step": state.step,
        "stream_position": stream.position(state.step),
        "sae": {name: t.detach().cpu() for name, t in state.sae.state_dict().items()},
        "optimizer": state.optimizer.state_dict(),
        "threshold": state.threshold,
        "tokens_since_fired": state.tokens_since_fired.cpu(),
        "input_scale": state.input_scale,
        "recent_losses": state.recent_losses,
    }
    temporary = path.with_suffix(".tmp")
    torch.save(content, temporary)
    os.replace(temporary, path)


def _load_state(path: Path, config: MatryoshkaTrainingConfig, stream: ShuffledStream) -> _State:
    content = torch.load(path, map_location="cpu", weights_only=True)
    if content.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a trainer checkpoint of format {_CHECKPOINT_FORMAT}")
    expected = _run_settings(config, stream)
    differing = sorted(k for k in expected if content["run"].get(k) != expected[k])
    if differing:
        found = {k: content["run"].get(k) for k in differing}
        raise ValueError(
            f"{path}: the checkpoint was trained with other settings {found}; "
            "use another checkpoint_dir or pass resume=False"
        )
    sae = _TrainableSae(config.d_model, config.d_sae)
    sae.load_state_dict(content["sae"])
    sae.to(config.device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.learning_rate, betas=(0.9, 0.999))
    optimizer.load_state_dict(content["optimizer"])
    return _State(
        sae=sae,
        optimizer=optimizer,
        step=int(content["step"]),
        threshold=float(content["threshold"]),
        tokens_since_fired=content["tokens_since_fired"].to(config.device),
        input_scale=float(content["input_scale"]),
        recent_losses=list(content["recent_losses"]),
    )


class _ProgressBar:
    """tqdm on stderr with the loss and threshold, or nothing."""

    def __init__(self, total: int, initial: int, *, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="SAE", unit="step", file=sys.stderr)

    def update(self, loss: float, threshold: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4g}", threshold=f"{threshold:.3g}", refresh=False)
            self._bar.update()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
