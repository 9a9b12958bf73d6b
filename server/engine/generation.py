"""One GenerateSteered call between decode steps: its rows, its steering, its sampler.

Every variant of a call is a row. ``GenerationCall.prefill_chunk`` runs the prompt, whole or
in chunks of at most so many tokens over several engine steps; from then on the call's rows
live in a decode batch (``decode_batch.DecodeBatch``) beside the rows of other calls, and
each decode step hands the call the logits of its rows still running: ``take`` samples their
next tokens, returns them as events and retires the rows that end (EOS, length), so a
finished variant costs nothing more. The call ends when its last row does, or when it is
stopped (cancel, deadline); ``finished`` is then each variant's result.

The variants of a call share one prompt, so the prefill is shared: when no intervention
touches a prompt position the whole prompt runs once (vision tower included) and its cache is
repeated per row; otherwise it runs once up to the steering layer, and from there as one row
per variant (``prefill.ChunkedPrefill``). Positions no intervention selects are bit-for-bit
unedited, so skipping the edit where it selects nothing changes nothing. Each forward (a
prefill chunk, a decode step) tells the steerer which absolute position it starts at, so an
intervention scoped to the prompt, the generated tokens, the image patches or explicit ranges
lands exactly there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from maira_sae.sae.model import MatryoshkaSAE
from maira_sae.server.engine.detokenize import IncrementalDecoder
from maira_sae.server.engine.prefill import ChunkedPrefill, Prefilled
from maira_sae.server.engine.sampling import RowSampler
from maira_sae.server.engine.steering_plan import ChunkSteerer, SteeringPlan
from maira_sae.server.engine.types import (
    FinishReason,
    GeneratedToken,
    GenerationSettings,
    Variant,
    VariantFinished,
)
from maira_sae.server.maira2.grounding import parse_grounded_output
from maira_sae.server.maira2.image_preprocessing import ImageGeometry
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import ModelInputs

__all__ = ["GenerationCall", "Prefilled"]


@dataclass
class _Row:
    decoder: IncrementalDecoder
    num_tokens: int = 0
    finish_reason: FinishReason | None = None


class GenerationCall:
    """The state of one call's rows between decode steps (owned by the engine thread)."""

    def __init__(
        self,
        request_id: int,
        model: Maira2ForConditionalGeneration,
        inputs: ModelInputs,
        variants: Sequence[Variant],
        settings: GenerationSettings,
        *,
        sae: MatryoshkaSAE | None,
        steer_layer: int,
        eos_token_ids: frozenset[int],
        decode: Callable[[Sequence[int]], str],
        grounded_image: ImageGeometry | None,
    ) -> None:
        """``grounded_image``: the frontal image's geometry a grounded task's boxes are mapped
        through (None: not a grounded task)."""
        self.request_id = request_id
        self._settings = settings
        self._eos_token_ids = eos_token_ids
        self._grounded_image = grounded_image
        self.steer_layer = steer_layer
        self.prompt_length = int(inputs.input_ids.shape[0])
        self._plan = SteeringPlan(variants, inputs.tokens)
        self._steerer = None if self._plan.is_empty else ChunkSteerer(self._plan, sae)
        self._sampler = RowSampler(
            rows=len(variants),
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=settings.seed,
            device=model.device,
        )
        self._rows = [_Row(IncrementalDecoder(decode)) for _ in variants]
        touches_prompt = self._plan.touches_prompt
        self._prefill = ChunkedPrefill(
            model,
            inputs,
            len(variants),
            branch=steer_layer if touches_prompt else None,
            steerer=self._steerer if touches_prompt else None,
        )
        self.active: list[int] = list(range(len(variants)))  # rows still generating, in order
        self.generated = 0  # tokens generated per row so far (the decode step count)
        self.next_tokens: torch.Tensor | None = None  # [active]: the tokens the next step feeds

    @property
    def done(self) -> bool:
        return not self.active

    @property
    def rows(self) -> int:
        """Rows still generating."""
        return len(self.active)

    @property
    def position(self) -> int:
        """The absolute position of the tokens the next forward feeds."""
        return self.prompt_length + self.generated - 1

    @property
    def steerer(self) -> ChunkSteerer | None:
        return self._steerer

    @property
    def prefill_remaining(self) -> int:
        """Prompt tokens not run yet (0 once the prefill is done)."""
        return self._prefill.remaining

    def prefill_chunk(self, max_tokens: int) -> Prefilled | None:
        """Run the next ``max_tokens`` prompt tokens for every row (shared where the rows do
        not differ yet): the Prefilled once the prompt is done, None while more remain."""
        return self._prefill.run(max_tokens)

    def take(self, logits: torch.Tensor) -> tuple[list[int], tuple[GeneratedToken, ...]]:
        """Sample the next token of each active row from its ``logits [active, vocab]`` and
        retire the rows that end; returns the positions (within the rows that were active) of
        the rows that go on, whose tokens are now ``next_tokens``, and the new tokens."""
        tokens = self._sampler(logits, self.active).tolist()
        position = self.prompt_length + self.generated
        self.generated += 1
        last = self.generated == self._settings.max_new_tokens
        going_on: list[int] = []
        emitted: list[GeneratedToken] = []
        for slot, (row_index, token_id) in enumerate(zip(self.active, tokens, strict=True)):
            row = self._rows[row_index]
            if token_id in self._eos_token_ids:
                row.finish_reason = FinishReason.EOS
                continue
            row.num_tokens += 1
            emitted.append(
                GeneratedToken(row_index, position, token_id, row.decoder.push(token_id))
            )
            if last:
                row.finish_reason = FinishReason.LENGTH
            else:
                going_on.append(slot)
        self.next_tokens = torch.tensor([tokens[slot] for slot in going_on], dtype=torch.long)
        self.active = [self.active[slot] for slot in going_on]
        if self._steerer is not None:
            self._steerer.set_rows(self.active)
        return going_on, tuple(emitted)

    def stop(self, reason: FinishReason) -> None:
        """End every row still running with ``reason`` (cancel, deadline)."""
        for row_index in self.active:
            self._rows[row_index].finish_reason = reason
        self.active = []

    def finished(self) -> tuple[VariantFinished, ...]:
        """Each variant's result (with the grounded parse for grounded tasks)."""
        return tuple(self._finished(index, row) for index, row in enumerate(self._rows))

    def _finished(self, index: int, row: _Row) -> VariantFinished:
        text = row.decoder.text
        phrases, parse_ok = (
            ((), True)
            if self._grounded_image is None
            else parse_grounded_output(text, self._grounded_image)
        )
        return VariantFinished(
            variant_index=index,
            text=text,
            finish_reason=row.finish_reason or FinishReason.LENGTH,
            num_tokens=row.num_tokens,
            phrases=phrases,
            parse_ok=parse_ok,
        )
