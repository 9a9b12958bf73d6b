"""The scheduler on its own, in front of a fake engine: admission, batching, deadlines, drain,
cancellation and failures, without a model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

import pytest

from maira_sae.server.engine.scheduler import Scheduler
from maira_sae.server.engine.types import GeneratedToken, GenerationEvent
from maira_sae.server.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

QUEUE_SIZE = 3


class FakeEngine:
    """Answers an analysis with its input; generates tokens until told to stop. ``gate`` holds
    the engine thread inside a batch, so a test can fill the queue behind it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[list[object]] = []
        self.generated = 0
        self.fail_next = False

    def analyse(self, batch: Sequence[object]) -> list[object]:
        self.gate.wait(10)
        self.batches.append(list(batch))
        if self.fail_next:
            self.fail_next = False
            raise InvalidArgument("this batch is bad")
        return [("result", item) for item in batch]

    def generate(
        self,
        prepared: object,
        emit: Callable[[GenerationEvent], None],
        should_stop: Callable[[], bool],
    ) -> None:
        for position in range(1000):
            if should_stop():
                return
            self.generated += 1
            emit(GeneratedToken(variant_index=0, position=position, token_id=7, text="a"))
            time.sleep(0.001)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def scheduler(engine: FakeEngine):
    scheduler = Scheduler(engine, queue_size=QUEUE_SIZE, max_batch_size=8, batch_window_s=0.05)
    scheduler.start()
    yield scheduler
    engine.gate.set()
    scheduler.close()


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def test_a_full_queue_refuses_at_once_with_a_retry_delay_and_admits_again_after(scheduler, engine):
    async def scenario() -> None:
        engine.gate.clear()  # the first request runs and blocks; the others queue behind it
        admitted = [asyncio.create_task(scheduler.analyse(i, None)) for i in range(QUEUE_SIZE)]
        await wait_until(lambda: engine.gate.is_set() is False and len(admitted) == QUEUE_SIZE)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(ResourceExhausted) as refused:
            await scheduler.analyse("one too many", None)
        assert time.monotonic() - started < 0.05  # refused without waiting for the engine
        assert refused.value.retry_after_s > 0
        assert "queue is full (3 requests)" in str(refused.value)
        engine.gate.set()
        assert await asyncio.gather(*admitted) == [("result", i) for i in range(QUEUE_SIZE)]
        assert await scheduler.analyse("after", None) == ("result", "after")

    asyncio.run(scenario())


def test_analyses_arriving_within_the_window_share_one_batch(scheduler, engine):
    async def scenario() -> list[object]:
        return await asyncio.gather(*(scheduler.analyse(i, None) for i in range(3)))

    assert asyncio.run(scenario()) == [("result", i) for i in range(3)]
    assert [len(batch) for batch in engine.batches] == [3]


def test_work_whose_deadline_passed_while_queued_never_reaches_the_engine(scheduler, engine):
    async def scenario() -> None:
        engine.gate.clear()
        blocker = asyncio.create_task(scheduler.analyse("blocker", None))
        await asyncio.sleep(0.1)
        late = asyncio.create_task(scheduler.analyse("late", time.monotonic() + 0.05))
        await asyncio.sleep(0.2)
        engine.gate.set()
        await blocker
        with pytest.raises(DeadlineExceeded):
            await late

    asyncio.run(scenario())
    assert all("late" not in batch for batch in engine.batches)


def test_draining_refuses_new_work_as_unavailable(scheduler):
    scheduler.stop_accepting()
    with pytest.raises(Unavailable, match="shutting down"):
        asyncio.run(scheduler.analyse("x", None))


def test_a_failed_batch_fails_its_requests_and_the_scheduler_keeps_serving(scheduler, engine):
    engine.fail_next = True
    with pytest.raises(InvalidArgument, match="this batch is bad"):
        asyncio.run(scheduler.analyse("bad", None))
    assert asyncio.run(scheduler.analyse("good", None)) == ("result", "good")


def test_closing_a_stream_stops_its_generation_at_the_next_token(scheduler, engine):
    async def scenario() -> None:
        stream = scheduler.generate("prepared", None)
        received = [await anext(stream) for _ in range(3)]
        assert [event.position for event in received] == [0, 1, 2]
        await stream.aclose()

    asyncio.run(scenario())
    time.sleep(0.1)
    stopped_at = engine.generated
    time.sleep(0.1)
    assert engine.generated == stopped_at < 1000
    assert asyncio.run(scheduler.analyse("next", None)) == ("result", "next")
