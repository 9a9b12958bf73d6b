"""Chunked prefill (demo checkpoint, float32): a prompt run in chunks of a few tokens generates
exactly what it generates in one forward, steered on the prompt or on the generated tokens;
through the step loop, a prompt larger than the budget is prefilled one chunk per turn with a
decode step for the running streams between chunks, and a call stopped mid-prefill gets no
more chunks. The budget rules themselves run in front of the fake engine."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from maira_sae.sae.interventions import Intervention, SteeringMode
from maira_sae.server.engine.engine import Engine
from maira_sae.server.engine.jobs import GenerateJob, JobQueue
from maira_sae.server.engine.step_loop import DecodeLimits, SchedulerObserver, StepLoop
from maira_sae.server.engine.types import (
    FinishReason,
    GeneratedToken,
    GenerateRequest,
    GenerationEvent,
    GenerationSettings,
    PositionScope,
    ScopedIntervention,
    Variant,
    VariantFinished,
)
from maira_sae.server.errors import DeadlineExceeded
from maira_sae.server.maira2.study import Study
from maira_sae.server.service.metrics import Metrics
from maira_sae.server.service.runtime import load_runtime
from maira_sae.server.service.warmup import synthetic_chest_image
from tests.support.fake_engine import FakeEngine, fake_prepared
from tests.support.servers import demo_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STUDY = Study(frontal=synthetic_chest_image(), indication="Shortness of breath.")
BUDGET = 512  # the demo prompt has 1422 tokens: chunks of 512, 512, 398
LAYER = 8


@pytest.fixture(scope="module")
def engine(demo_checkpoint) -> Engine:
    """The demo SAE read and steered at block 8: at its own layer 15, the last block, an edit
    of a prompt position reaches nothing but that position's logits, so only the last prompt
    position would show whether a chunk's steering landed where it should."""
    served = load_runtime(demo_config(demo_checkpoint), Metrics()).engine
    entry = replace(served.sae(""), layer=LAYER)
    return Engine(served.model, served.processor, [entry])


def steer(scope: PositionScope) -> Variant:
    intervention = Intervention(SteeringMode.ADD, 30.0, feature=3)
    return Variant((ScopedIntervention(intervention, scope),))


BASELINE = (Variant(),)


def prepared(engine: Engine, variants=BASELINE, tokens: int = 6):
    request = GenerateRequest(
        study=STUDY, variants=tuple(variants), settings=GenerationSettings(max_new_tokens=tokens)
    )
    return engine.prepare_generation(request)


def generate(engine: Engine, variants, chunk: int | None) -> tuple[dict, int]:
    """Tokens and texts per variant, prefilled ``chunk`` tokens at a time (None: in one go),
    and the number of chunks."""
    events: list[GenerationEvent] = []
    batch = engine.new_batch()
    call = engine.start(prepared(engine, variants), events.append)
    chunks = 1
    while not engine.prefill_chunk(batch, call, chunk or call.prefill_remaining):
        chunks += 1
    while not call.done:
        engine.step(batch)
    engine.forget(batch)
    texts = {e.variant_index: e.text for e in events if isinstance(e, VariantFinished)}
    tokens: dict[int, list[int]] = {index: [] for index in texts}
    for event in events:
        if isinstance(event, GeneratedToken):
            tokens[event.variant_index].append(event.token_id)
    return {index: (tokens[index], text) for index, text in texts.items()}, chunks


@pytest.mark.parametrize(
    "variants",
    [
        pytest.param((Variant(), steer(PositionScope.IMAGE), steer(PositionScope.GENERATED)),
                     id="branched at the steering layer"),
        pytest.param((Variant(), steer(PositionScope.GENERATED)), id="shared whole"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("chunk", [7, 64])
def test_a_prompt_prefilled_in_chunks_generates_what_one_forward_does(engine, variants, chunk):
    whole, one = generate(engine, variants, None)
    chunked, chunks = generate(engine, variants, chunk)
    assert one == 1
    assert chunks == math.ceil(len(prepared(engine).inputs.tokens) / chunk)
    assert chunked == whole
    assert all(whole[index][0] != whole[0][0] for index in range(1, len(variants))), (
        "every steered variant must differ from the baseline, or the test proves nothing"
    )


def test_chunks_run_the_vision_tower_once_and_share_the_blocks_below_the_steering_layer(engine):
    seen: dict[object, set[int]] = {"vision": set(), LAYER - 1: set(), LAYER: set()}

    def record(key):
        def hook(_module, _args, output):
            hidden = output.last_hidden_state if key == "vision" else output
            seen[key].add(hidden.shape[0])
            if key == "vision":
                calls.append(1)

        return hook

    calls: list[int] = []
    model = engine.model
    handles = [model.model.vision_tower.register_forward_hook(record("vision"))]
    blocks = (LAYER - 1, LAYER)
    handles += [model.decoder_layers[b].register_forward_hook(record(b)) for b in blocks]
    steered = prepared(engine, (Variant(), steer(PositionScope.PROMPT)))
    try:
        batch = engine.new_batch()
        call = engine.start(steered, lambda _: None)
        while not engine.prefill_chunk(batch, call, 300):
            pass
        engine.forget(batch)
    finally:
        for handle in handles:
            handle.remove()
    assert (len(calls), seen) == (1, {"vision": {1}, LAYER - 1: {1}, LAYER: {2}})  # fmt: skip


class Recording:
    """The engine, with a timeline of its prefill chunks, decode steps and tokens; calls are
    named by the order they started in (a, b, ...)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.timeline: list[tuple] = []
        self.events: dict[str, list[GenerationEvent]] = {}
        self._names: dict[int, str] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def start(self, prepared, emit: Callable[[GenerationEvent], None]):
        name = "abcdefgh"[len(self._names)]
        self.events[name] = []

        def recorded(event: GenerationEvent) -> None:
            self.events[name].append(event)
            if isinstance(event, GeneratedToken):
                self.timeline.append(("token", name))
            emit(event)

        call = self._engine.start(prepared, recorded)
        self._names[id(call)] = name
        return call

    def prefill_chunk(self, batch, call, max_tokens: int) -> bool:
        self.timeline.append(("chunk", self._names[id(call)], max_tokens))
        return self._engine.prefill_chunk(batch, call, max_tokens)

    def step(self, batch):
        self.timeline.append(("step", batch.rows))
        return self._engine.step(batch)


@pytest.fixture
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The callers' loop the jobs answer on; it is not running: ``sent`` drains it."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def step_loop(engine, budget: int = BUDGET) -> tuple[StepLoop, JobQueue]:
    queue = JobQueue()
    limits = DecodeLimits(prefill_token_budget=budget)
    loop = StepLoop(engine, queue, max_batch_size=8, batch_window_s=0.0, limits=limits,
                    observer=SchedulerObserver())  # fmt: skip
    return loop, queue


def job(loop: asyncio.AbstractEventLoop, queue: JobQueue, prepared) -> GenerateJob:
    queued = GenerateJob(loop=loop, deadline=None, prepared=prepared)
    queue.put(queued)
    return queued


def sent(loop: asyncio.AbstractEventLoop, queued: GenerateJob) -> list:
    loop.run_until_complete(asyncio.sleep(0))
    items = []
    while not queued.events.empty():
        items.append(queued.events.get_nowait())
    return items


def test_a_running_stream_gets_a_token_between_the_chunks_of_a_long_prefill(engine, event_loop):
    recording = Recording(engine)
    loop, queue = step_loop(recording)
    job(event_loop, queue, prepared(engine, tokens=12))
    for _ in range(3):
        loop.turn()
    job(event_loop, queue, prepared(engine, (Variant(), steer(PositionScope.PROMPT)), tokens=3))
    for _ in range(3):
        loop.turn()
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
    while any(not item.done for item in loop._batch.calls):
        loop.turn()
    for name, variants, tokens in [("a", (Variant(),), 12),
                                   ("b", (Variant(), steer(PositionScope.PROMPT)), 3)]:  # fmt: skip
        alone: list[GenerationEvent] = []
        engine.generate(prepared(engine, variants, tokens), alone.append, lambda: False)
        assert recording.events[name] == alone, f"call {name} depends on being chunked"


@pytest.mark.parametrize("how", ["cancelled", "deadline"])
def test_a_call_stopped_mid_prefill_gets_no_more_chunks(engine, event_loop, how):
    recording = Recording(engine)
    loop, queue = step_loop(recording)
    stopped = job(event_loop, queue, prepared(engine, (Variant(), steer(PositionScope.IMAGE))))
    loop.turn()
    if how == "cancelled":
        stopped.stop.set()
    else:
        stopped.deadline = time.monotonic()
    job(event_loop, queue, prepared(engine))
    loop.turn()
    assert recording.timeline == [("chunk", "a", 512), ("chunk", "b", 512)]
    *finished, end = sent(event_loop, stopped)
    assert [(e.variant_index, e.finish_reason, e.num_tokens) for e in finished] == [
        (0, FinishReason.CANCELLED, 0), (1, FinishReason.CANCELLED, 0)
    ]  # fmt: skip
    assert end is None if how == "cancelled" else isinstance(end, DeadlineExceeded)


def test_the_budget_goes_to_the_call_being_prefilled_then_to_whole_prompts_in_order(event_loop):
    fake = FakeEngine(step_delay_s=0)
    loop, queue = step_loop(fake, budget=100)
    for tokens in (250, 30, 60, 20):
        job(event_loop, queue, fake_prepared(tokens=tokens, max_new_tokens=50))
    chunks_per_turn = []
    for _ in range(5):
        before = len(fake.chunks)
        loop.turn()
        chunks_per_turn.append(fake.chunks[before:])
    # 250 in chunks; 30 fits the rest of its last turn, 60 does not and waits (and 20 behind
    # it); the first prompt of a turn may take the whole budget
    assert chunks_per_turn == [[100], [100], [50, 30], [60, 20], []]
    assert fake.steps[:3] == [2, 4, 4]  # a decode step every turn from the first join on
