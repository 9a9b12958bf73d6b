"""One generation run on the engine in-process, timed token by token; and the steered variants
the benchmarks compare (one ADD, one CLAMP, on a feature of the served SAE)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from maira_sae.sae.interventions import Intervention, SteeringMode
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.types import (
    GeneratedToken,
    GenerateRequest,
    GenerationEvent,
    GenerationSettings,
    ScopedIntervention,
    Variant,
)
from maira_sae.server.maira2.study import Study

STEERED_FEATURE = 3
ADD_VALUE = 8.0
CLAMP_VALUE = 4.0

BASELINE = Variant(name="baseline")
ADD = Variant(
    (ScopedIntervention(Intervention(SteeringMode.ADD, ADD_VALUE, feature=STEERED_FEATURE)),),
    name="add",
)
CLAMP = Variant(
    (ScopedIntervention(Intervention(SteeringMode.CLAMP, CLAMP_VALUE, feature=STEERED_FEATURE)),),
    name="clamp",
)


@dataclass(frozen=True)
class GenerationTiming:
    """``first_token_s`` covers the prefill (and the first sampling); decode is the rest."""

    first_token_s: float
    last_token_s: float
    total_s: float
    tokens_per_row: int
    rows: int

    @property
    def decode_tokens_per_s(self) -> float:
        """Generated tokens per second of one row after the first token."""
        return (self.tokens_per_row - 1) / (self.last_token_s - self.first_token_s)


def generation_request(
    study: Study, variants: tuple[Variant, ...], max_new_tokens: int
) -> GenerateRequest:
    return GenerateRequest(
        study=study,
        settings=GenerationSettings(max_new_tokens=max_new_tokens),
        variants=variants,
    )


def timed_generation(engine: Engine, request: GenerateRequest) -> GenerationTiming:
    """Prepare and generate as the scheduler would; the clock starts at ``generate``.

    The model must not stop early (the demo model never writes ``</s>``; random full-size
    weights practically never do), so every row makes ``max_new_tokens`` tokens.
    """
    prepared = engine.prepare_generation(request)
    token_times: list[float] = []

    def emit(event: GenerationEvent) -> None:
        if isinstance(event, GeneratedToken) and event.variant_index == 0:
            token_times.append(time.perf_counter())

    started = time.perf_counter()
    engine.generate(prepared, emit, lambda: False)
    finished = time.perf_counter()
    tokens = request.settings.max_new_tokens
    if len(token_times) != tokens:
        raise RuntimeError(f"row 0 stopped after {len(token_times)} of {tokens} tokens")
    return GenerationTiming(
        first_token_s=token_times[0] - started,
        last_token_s=token_times[-1] - started,
        total_s=finished - started,
        tokens_per_row=tokens,
        rows=len(request.variants),
    )
