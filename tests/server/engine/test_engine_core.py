"""The engine core's steps on the demo checkpoint (float32) and in front of the fake runner: a
prompt larger than the budget is prefilled one chunk per step with a decode step for the
running streams between chunks, and tokens equal those of the call run alone; a call stopped
mid-prefill gets no more chunks and ends as its caller expects; the executor carries out
the plans (the plans themselves: test_schedule.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from maira_sae.server.engine.decode_batch import CallEvents
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.engine_core import EngineCore
from maira_sae.server.engine.schedule import BatchLimits, LeaveReason
from maira_sae.server.engine.types import (
    FinishReason,
    GenerationEvent,
    PositionScope,
    Variant,
)
from maira_sae.server.errors import DeadlineExceeded
from tests.server.engine.test_prefill import prepared, steer, steered_at_block_8
from tests.support.fake_engine import FakeEngine, fake_prepared

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUDGET = 512  # the demo prompt has 1422 tokens: chunks of 512, 512, 398


@pytest.fixture(scope="module")
def engine(demo_checkpoint) -> Engine:
    return steered_at_block_8(demo_checkpoint)


@dataclass(eq=False)
class Stream:
    """A generation's caller as the core sees it: the events it was sent and its end."""

    prepared: object
    deadline: float | None = None
    cancelled: bool = False
    enqueued_at: float = field(default_factory=time.monotonic)
    events: list[GenerationEvent] = field(default_factory=list)
    end: object = "open"

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def stop_reason(self) -> LeaveReason | None:
        return LeaveReason.CANCELLED if self.cancelled else None

    def send(self, item) -> None:
        if isinstance(item, BaseException) or item is None:
            self.end = item
        else:
            self.events.append(item)


class Recording:
    """The engine's generation runner, with a timeline of its prefill chunks, decode steps and
    tokens; calls are named by the order they started in (a, b, ...)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._runner = engine.generations
        self.timeline: list[tuple] = []
        self._names: dict[int, str] = {}  # request id -> name

    @property
    def generations(self) -> Recording:
        return self

    def analyse(self, batch):
        return self._engine.analyse(batch)

    def new_batch(self):
        return self._runner.new_batch()

    def stop(self, batch, call, reason):
        return self._runner.stop(batch, call, reason)

    def start(self, request_id: int, prepared):
        self._names[request_id] = "abcdefgh"[len(self._names)]
        return self._runner.start(request_id, prepared)

    def prefill_chunk(self, batch, call, max_tokens: int) -> bool:
        self.timeline.append(("chunk", self._names[call.request_id], max_tokens))
        return self._runner.prefill_chunk(batch, call, max_tokens)

    def decode(self, batch) -> list[CallEvents]:
        self.timeline.append(("step", batch.rows))
        decoded = self._runner.decode(batch)
        for events in decoded:
            self.timeline += [("token", self._names[events.request_id])] * len(events.tokens)
        return decoded


def core(runner, budget: int = BUDGET) -> EngineCore:
    limits = BatchLimits(prefill_token_budget=budget)
    return EngineCore(runner, limits=limits, max_analysis_batch=8)


def test_a_running_stream_gets_a_token_between_the_chunks_of_a_long_prefill(engine):
    recording = Recording(engine)
    steps = core(recording)
    a = Stream(prepared(engine, tokens=12))
    steps.add_generation(a)
    for _ in range(3):
        steps.step()
    b = Stream(prepared(engine, (Variant(), steer(PositionScope.PROMPT)), tokens=3))
    steps.add_generation(b)
    for _ in range(3):
        steps.step()
    assert recording.timeline == [
        ("chunk", "a", 512), ("chunk", "a", 512), ("chunk", "a", 398),
        ("step", 1), ("token", "a"),
        ("chunk", "b", 512),
        ("step", 1), ("token", "a"),
        ("chunk", "b", 512),
        ("step", 1), ("token", "a"),
        ("chunk", "b", 398),
        ("step", 3), ("token", "a"), ("token", "b"), ("token", "b"),
    ]  # fmt: skip
    while not steps.idle:
        steps.step()
    for stream in (a, b):
        alone: list[GenerationEvent] = []
        engine.generate(stream.prepared, alone.append, lambda: False)
        assert stream.events == alone, "a call depends on being chunked"
        assert stream.end is None


@pytest.mark.parametrize("how", ["cancelled", "deadline"])
def test_a_call_stopped_mid_prefill_gets_no_more_chunks(engine, how):
    recording = Recording(engine)
    steps = core(recording)
    stopped = Stream(prepared(engine, (Variant(), steer(PositionScope.IMAGE))))
    steps.add_generation(stopped)
    steps.step()
    if how == "cancelled":
        stopped.cancelled = True
    else:
        stopped.deadline = time.monotonic()
    steps.add_generation(Stream(prepared(engine)))
    steps.step()
    assert recording.timeline == [("chunk", "a", 512), ("chunk", "b", 512)]
    assert [(e.variant_index, e.finish_reason, e.num_tokens) for e in stopped.events] == [
        (0, FinishReason.CANCELLED, 0), (1, FinishReason.CANCELLED, 0)
    ]  # fmt: skip
    assert stopped.end is None if how == "cancelled" else isinstance(stopped.end, DeadlineExceeded)


def test_the_executor_prefills_the_chunks_each_plan_gives_and_decodes_the_joined_rows():
    fake = FakeEngine(step_delay_s=0)
    steps = core(fake, budget=100)
    for tokens in (250, 30, 60, 20):
        steps.add_generation(Stream(fake_prepared(tokens=tokens, max_new_tokens=50)))
    chunks_per_step = []
    for _ in range(5):
        before = len(fake.chunks)
        steps.step()
        chunks_per_step.append(fake.chunks[before:])
    assert chunks_per_step == [[100], [100], [50, 30], [60, 20], []]
    assert fake.steps[:3] == [2, 4, 4]  # a decode step every step from the first join on
