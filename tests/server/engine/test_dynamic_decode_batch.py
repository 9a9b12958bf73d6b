"""Rows of different calls in one forward of the dynamic decode batch (demo checkpoint,
float32): a call's tokens are the same alone or joined mid-flight beside calls of other prompt
lengths and steering; rows leave as they end, and the cache shrinks with them. The helpers
drive any decode batch through its contract (the static batch's tests use them too)."""

from __future__ import annotations

import numpy as np
import pytest

from maira_sae.sae.interventions import Intervention, SteeringMode
from maira_sae.server.engine.decode_batch import CallEvents
from maira_sae.server.engine.dynamic_decode_batch import DynamicDecodeBatch
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.generation import GenerationCall
from maira_sae.server.engine.types import (
    FinishReason,
    GeneratedToken,
    GenerateRequest,
    GenerationSettings,
    ScopedIntervention,
    Variant,
    VariantFinished,
)
from maira_sae.server.maira2.study import Study
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine(demo_engine) -> Engine:
    return demo_engine


def add(value: float, feature: int = 3) -> Variant:
    return Variant((ScopedIntervention(Intervention(SteeringMode.ADD, value, feature=feature)),))


def request(study: Study, variants, tokens: int, **settings) -> GenerateRequest:
    return GenerateRequest(
        study=study,
        variants=tuple(variants),
        settings=GenerationSettings(max_new_tokens=tokens, **settings),
    )


SHORT = Study(frontal=synthetic_chest_image(), indication="Cough.")
LONG = Study(
    frontal=np.flipud(synthetic_chest_image()).copy(),
    lateral=synthetic_chest_image(),
    indication="Shortness of breath on exertion for two weeks, worse at night.",
)


class Recorder:
    def __init__(self) -> None:
        self.events: list = []

    def __call__(self, event) -> None:
        self.events.append(event)

    def add(self, events: CallEvents) -> None:
        self.events += [*events.tokens, *events.finished]

    def tokens(self, variant: int) -> list[int]:
        return [
            e.token_id
            for e in self.events
            if isinstance(e, GeneratedToken) and e.variant_index == variant
        ]

    def finished(self) -> dict[int, VariantFinished]:
        return {e.variant_index: e for e in self.events if isinstance(e, VariantFinished)}


class Calls:
    """Calls on one decode batch of an engine, each recorded by its own recorder."""

    def __init__(self, engine: Engine) -> None:
        self.runner = engine.generations
        self.batch = self.runner.new_batch()
        self.recorders: dict[int, Recorder] = {}
        self._engine = engine

    def begin(self, generate: GenerateRequest) -> tuple[GenerationCall, Recorder]:
        """Start a call and prefill it whole: its rows join the batch."""
        request_id = len(self.recorders)
        call = self.runner.start(request_id, self._engine.prepare_generation(generate))
        assert self.runner.prefill_chunk(self.batch, call, call.prefill_remaining)
        self.recorders[request_id] = Recorder()
        return call, self.recorders[request_id]

    def step(self) -> list[int]:
        """One decode step; the ids of the calls that ended in it."""
        decoded = self.runner.decode(self.batch)
        for events in decoded:
            self.recorders[events.request_id].add(events)
        return [events.request_id for events in decoded if events.done]

    def stop(self, call: GenerationCall) -> None:
        finished = self.runner.stop(self.batch, call, FinishReason.CANCELLED)
        self.recorders[call.request_id].events += finished


def joined_mid_flight(
    engine: Engine, first: GenerateRequest, second: GenerateRequest, after_steps: int
) -> tuple[Recorder, Recorder, int]:
    """Run ``first``, join ``second`` after ``after_steps`` steps, run both to the end;
    returns their recorders and the rows right after the join."""
    calls = Calls(engine)
    _, a = calls.begin(first)
    for _ in range(after_steps):
        calls.step()
    _, b = calls.begin(second)
    rows = calls.batch.rows
    while calls.batch.calls:
        calls.step()
    assert calls.batch.rows == 0
    return a, b, rows


def one_call_stopped(
    engine: Engine, steady: GenerateRequest, victim: GenerateRequest, *, victim_first: bool
) -> tuple[Recorder, Recorder, int]:
    """Run ``steady`` and ``victim`` together, stop the victim after one step, run the other
    to its end; returns their recorders and the rows right after the stop."""
    calls = Calls(engine)
    if victim_first:
        victim_call, stopped = calls.begin(victim)
        _, kept = calls.begin(steady)
    else:
        _, kept = calls.begin(steady)
        victim_call, stopped = calls.begin(victim)
    calls.step()
    calls.stop(victim_call)
    rows = calls.batch.rows
    while calls.batch.calls:
        calls.step()
    assert stopped.finished()[0].finish_reason is FinishReason.CANCELLED
    return kept, stopped, rows


def alone(engine: Engine, generate: GenerateRequest) -> Recorder:
    recorder = Recorder()
    engine.generate(engine.prepare_generation(generate), recorder, lambda: False)
    return recorder


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_call_joining_mid_flight_generates_what_it_generates_alone(engine, temperature):
    first = request(LONG, [Variant(), add(30.0)], 8, temperature=temperature, seed=5)
    second = request(SHORT, [add(-20.0, feature=9), Variant()], 5, temperature=temperature)
    a, b, rows = joined_mid_flight(engine, first, second, after_steps=3)
    assert rows == 4
    for recorder, generate in ((a, first), (b, second)):
        reference = alone(engine, generate)
        for variant in range(2):
            assert recorder.tokens(variant) == reference.tokens(variant), variant
        assert recorder.finished() == reference.finished()


def test_rows_leave_as_their_calls_end_and_the_cache_shrinks(engine):
    calls = Calls(engine)
    batch = calls.batch
    long_call, _ = calls.begin(request(LONG, [Variant()], 2))
    short_call, _ = calls.begin(request(SHORT, [Variant(), add(5.0)], 6))
    assert isinstance(batch, DynamicDecodeBatch)
    width = batch.cached_positions
    assert width == long_call.prompt_length  # the short prompt is left-padded to it
    assert batch.rows == 3
    calls.step()
    ended = calls.step()
    assert ended == [long_call.request_id] and batch.rows == 2
    # the long prompt's extra columns are cut: only the short call's positions remain
    assert batch.cached_positions == short_call.prompt_length + 2
    while batch.calls:
        calls.step()
    assert batch.rows == 0 and batch.cached_positions == 0


def test_a_stopped_call_leaves_at_once_and_the_others_go_on_unchanged(engine):
    steady = request(SHORT, [add(25.0)], 6)
    victim = request(LONG, [Variant()], 50)
    kept, _, rows = one_call_stopped(engine, steady, victim, victim_first=False)
    assert rows == 1
    assert kept.tokens(0) == alone(engine, steady).tokens(0)
