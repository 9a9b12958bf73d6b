"""The decode loop: one prefill, then one KV-cached step per token, every variant a batch row.

Steering hooks stay on for the whole loop; each forward tells the steerer which absolute
positions it covers, so an intervention scoped to the prompt, the generated tokens, the image
patches or explicit ranges lands exactly there, with or without the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from maira_sae.sae.model import MatryoshkaSAE
from maira_sae.server.engine.detokenize import IncrementalDecoder
from maira_sae.server.engine.hooks import edit_residuals
from maira_sae.server.engine.sampling import RowSampler
from maira_sae.server.engine.steering_plan import ChunkSteerer, SteeringPlan
from maira_sae.server.engine.types import (
    FinishReason,
    GeneratedToken,
    GenerationEvent,
    GenerationSettings,
    Variant,
)
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import ModelInputs


@dataclass(frozen=True)
class RowResult:
    """What one row produced; the engine adds the grounded parse for grounded tasks."""

    variant_index: int
    text: str
    finish_reason: FinishReason
    num_tokens: int


@dataclass
class _Row:
    decoder: IncrementalDecoder
    num_tokens: int = 0
    finish_reason: FinishReason | None = None


def generate_rows(
    model: Maira2ForConditionalGeneration,
    inputs: ModelInputs,
    variants: Sequence[Variant],
    settings: GenerationSettings,
    *,
    sae: MatryoshkaSAE | None,
    steer_layer: int,
    eos_token_ids: frozenset[int],
    decode: Callable[[Sequence[int]], str],
    emit: Callable[[GenerationEvent], None],
    should_stop: Callable[[], bool],
) -> list[RowResult]:
    """Generate every variant of one study as one batch, streaming tokens through ``emit``."""
    device = model.device
    batch = len(variants)
    prompt_length = int(inputs.input_ids.shape[0])
    plan = SteeringPlan(variants, inputs.tokens)
    steerer = None if plan.is_empty else ChunkSteerer(plan, sae)
    sampler = RowSampler(
        rows=batch,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
        device=device,
    )
    rows = [_Row(IncrementalDecoder(decode)) for _ in variants]
    edits = {} if steerer is None else {steer_layer: steerer}

    with torch.inference_mode(), edit_residuals(model.decoder_layers, edits):
        output = model(
            input_ids=inputs.input_ids.to(device).unsqueeze(0).expand(batch, -1),
            pixel_values=inputs.pixel_values.to(device, model.dtype).repeat(batch, 1, 1, 1),
            use_cache=True,
            logits_to_keep=1,
        )
        for step in range(settings.max_new_tokens):
            next_tokens = sampler(output.logits[:, -1, :])
            _advance_rows(rows, next_tokens.tolist(), prompt_length + step, eos_token_ids, emit)
            if all(row.finish_reason is not None for row in rows):
                break
            if should_stop():
                _finish_open_rows(rows, FinishReason.CANCELLED)
                break
            if step + 1 == settings.max_new_tokens:
                break
            if steerer is not None:
                steerer.set_chunk(prompt_length + step)
            output = model(
                input_ids=next_tokens.unsqueeze(1),
                cache=output.cache,
                use_cache=True,
                logits_to_keep=1,
            )
    _finish_open_rows(rows, FinishReason.LENGTH)
    return [
        RowResult(index, row.decoder.text, row.finish_reason or FinishReason.LENGTH, row.num_tokens)
        for index, row in enumerate(rows)
    ]


def _advance_rows(
    rows: list[_Row],
    token_ids: list[int],
    position: int,
    eos_token_ids: frozenset[int],
    emit: Callable[[GenerationEvent], None],
) -> None:
    for index, (row, token_id) in enumerate(zip(rows, token_ids, strict=True)):
        if row.finish_reason is not None:
            continue
        if token_id in eos_token_ids:
            row.finish_reason = FinishReason.EOS
            continue
        row.num_tokens += 1
        emit(GeneratedToken(index, position, token_id, row.decoder.push(token_id)))


def _finish_open_rows(rows: list[_Row], reason: FinishReason) -> None:
    for row in rows:
        if row.finish_reason is None:
            row.finish_reason = reason
