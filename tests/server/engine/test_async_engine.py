"""The engine's front door in front of a fake model runner: admission, batching, deadlines,
drain, cancellation and failures, and the engine thread's steps (analysis between decode
steps, calls sharing steps, row limits), without a model. What a step decides is asserted
as plans in test_schedule.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from maira_sae.server.engine.async_engine import AsyncEngine
from maira_sae.server.engine.engine_core import SchedulerObserver
from maira_sae.server.engine.schedule import BatchLimits
from maira_sae.server.engine.types import FinishReason
from maira_sae.server.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from tests.support.fake_engine import FakeEngine, fake_analysis, fake_prepared

QUEUE_SIZE = 3


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def scheduler(engine: FakeEngine):
    scheduler = AsyncEngine(engine, queue_size=QUEUE_SIZE, max_batch_size=8, batch_window_s=0.05)
    scheduler.start()
    yield scheduler
    engine.gate.set()
    scheduler.close()


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` on the event loop (the engine thread makes it hold)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def test_a_full_queue_refuses_at_once_with_a_retry_delay_and_admits_again_after(scheduler, engine):
    async def scenario() -> None:
        engine.gate.clear()  # the first request runs and blocks; the others queue behind it
        admitted = [
            asyncio.create_task(scheduler.analyse(fake_analysis(i), None))
            for i in range(QUEUE_SIZE)
        ]
        await wait_until(engine.analysing.is_set)  # the others were admitted with it
        started = time.monotonic()
        with pytest.raises(ResourceExhausted) as refused:
            await scheduler.analyse(fake_analysis("one too many"), None)
        assert time.monotonic() - started < 0.05  # refused without waiting for the engine
        assert refused.value.retry_after_s > 0
        assert "queue is full (3 requests)" in str(refused.value)
        engine.gate.set()
        assert await asyncio.gather(*admitted) == [("result", i) for i in range(QUEUE_SIZE)]
        assert await scheduler.analyse(fake_analysis("after"), None) == ("result", "after")

    asyncio.run(scenario())


def test_analyses_arriving_within_the_window_share_one_batch(scheduler, engine):
    async def scenario() -> list[object]:
        return await asyncio.gather(*(scheduler.analyse(fake_analysis(i), None) for i in range(3)))

    assert asyncio.run(scenario()) == [("result", i) for i in range(3)]
    assert [len(batch) for batch in engine.batches] == [3]


def test_work_whose_deadline_passed_while_queued_never_reaches_the_engine(scheduler, engine):
    async def scenario() -> None:
        engine.gate.clear()
        blocker = asyncio.create_task(scheduler.analyse(fake_analysis("blocker"), None))
        await wait_until(engine.analysing.is_set)
        deadline = time.monotonic() + 0.05
        late = asyncio.create_task(scheduler.analyse(fake_analysis("late"), deadline))
        await wait_until(lambda: time.monotonic() > deadline)
        engine.gate.set()
        await blocker
        with pytest.raises(DeadlineExceeded):
            await late

    asyncio.run(scenario())
    assert all("late" not in batch for batch in engine.batches)


def test_draining_refuses_new_work_as_unavailable(scheduler):
    scheduler.stop_accepting()
    with pytest.raises(Unavailable, match="shutting down"):
        asyncio.run(scheduler.analyse(fake_analysis("x"), None))


def test_cutting_the_calls_in_flight_ends_them_unavailable_and_stops_their_rows(scheduler, engine):
    """The end of a drain: a running generation and a queued analysis end UNAVAILABLE at
    once, the generation's rows leave at the next step, and later calls are refused."""

    async def scenario() -> None:
        stream = scheduler.generate(fake_prepared(max_new_tokens=100_000), None)
        await anext(stream)
        engine.gate.clear()  # the analysis queues behind the engine
        analysis = asyncio.create_task(scheduler.analyse(fake_analysis("queued"), None))
        await asyncio.sleep(0.05)
        assert scheduler.cut_in_flight("the grace ran out") == 2
        with pytest.raises(Unavailable, match="the grace ran out"):
            await anext(stream)
        with pytest.raises(Unavailable, match="the grace ran out"):
            await analysis
        engine.gate.set()
        with pytest.raises(Unavailable, match="shutting down"):
            await scheduler.analyse(fake_analysis("late"), None)

    asyncio.run(scenario())
    asyncio.run(wait_until(lambda: bool(engine.stopped)))
    assert engine.stopped == [FinishReason.CANCELLED]
    stopped_at = engine.generated
    time.sleep(0.1)
    assert engine.generated == stopped_at < 100_000


def test_a_failed_batch_fails_its_requests_and_the_scheduler_keeps_serving(scheduler, engine):
    engine.fail_next = True
    with pytest.raises(InvalidArgument, match="this batch is bad"):
        asyncio.run(scheduler.analyse(fake_analysis("bad"), None))
    assert asyncio.run(scheduler.analyse(fake_analysis("good"), None)) == ("result", "good")


def test_closing_a_stream_stops_its_generation_at_the_next_token(scheduler, engine):
    async def scenario() -> None:
        stream = scheduler.generate(fake_prepared(), None)
        received = [await anext(stream) for _ in range(3)]
        assert [event.position for event in received] == [0, 1, 2]
        await stream.aclose()

    asyncio.run(scenario())
    asyncio.run(wait_until(lambda: bool(engine.stopped)))
    assert engine.stopped == [FinishReason.CANCELLED]
    stopped_at = engine.generated
    assert asyncio.run(scheduler.analyse(fake_analysis("next"), None)) == (
        "result",
        "next",
    )  # a later step
    assert engine.generated == stopped_at < 1000


def test_an_analysis_runs_between_the_decode_steps_of_a_long_generation(scheduler, engine):
    async def scenario() -> None:
        stream = scheduler.generate(fake_prepared(max_new_tokens=2000), None)
        await anext(stream)
        assert await scheduler.analyse(fake_analysis("between steps"), None) == (
            "result",
            "between steps",
        )
        assert engine.generated < 2000  # the generation was still running
        await stream.aclose()

    asyncio.run(scenario())


def test_concurrent_generations_share_each_decode_step(engine):
    scheduler = AsyncEngine(engine, queue_size=8, max_batch_size=8, batch_window_s=0.0)
    scheduler.start()

    async def drain(tokens: int) -> int:
        return len([event async for event in scheduler.generate(fake_prepared(
            max_new_tokens=tokens), None)])  # fmt: skip

    async def scenario() -> list[int]:
        return await asyncio.gather(drain(200), drain(200), drain(50))

    try:
        assert asyncio.run(scenario()) == [200, 200, 50]
    finally:
        scheduler.close()
    assert max(engine.steps) == 3  # the three calls' rows in one step
    assert engine.steps[-1] < 3  # the short call's row left once it ended


def test_calls_beyond_the_row_limit_wait_their_turn(engine):
    limits = BatchLimits(max_rows=2)
    scheduler = AsyncEngine(
        engine, queue_size=8, max_batch_size=8, batch_window_s=0.0, limits=limits
    )
    scheduler.start()

    async def drain(rows: int, tokens: int) -> int:
        prepared = fake_prepared(rows=rows, max_new_tokens=tokens)
        return len([event async for event in scheduler.generate(prepared, None)])

    async def scenario() -> list[int]:
        return await asyncio.gather(drain(1, 100), drain(1, 100), drain(2, 20))

    try:
        assert asyncio.run(scenario()) == [100, 100, 20]
    finally:
        scheduler.close()
    assert max(engine.steps) <= 2


def test_a_cancelled_call_leaves_at_the_next_step_and_the_others_go_on(engine):
    scheduler = AsyncEngine(engine, queue_size=8, max_batch_size=8, batch_window_s=0.0)
    scheduler.start()

    async def scenario() -> int:
        keeper = scheduler.generate(fake_prepared(max_new_tokens=300), None)
        leaver = scheduler.generate(fake_prepared(max_new_tokens=300), None)
        await anext(keeper)
        await anext(leaver)
        await leaver.aclose()
        return 1 + len([event async for event in keeper])

    try:
        assert asyncio.run(scenario()) == 300
    finally:
        scheduler.close()
    assert engine.steps[-1] == 1 and engine.steps.count(2) < 50


def test_a_call_without_a_deadline_ends_at_the_servers_limit_naming_the_setting(engine):
    scheduler = AsyncEngine(
        engine, queue_size=4, max_batch_size=8, batch_window_s=0.0, max_call_s=0.3
    )
    scheduler.start()

    async def drain(deadline: float | None, tokens: int) -> int:
        prepared = fake_prepared(max_new_tokens=tokens)
        return len([event async for event in scheduler.generate(prepared, deadline)])

    try:
        with pytest.raises(DeadlineExceeded) as ended:
            asyncio.run(drain(None, 10**6))
        assert "the server's limit of 0.3 s on a call without a deadline" in str(ended.value)
        assert "batching.max_call_s" in str(ended.value)
        assert asyncio.run(drain(time.monotonic() + 30, 500)) == 500  # its own deadline rules
    finally:
        scheduler.close()


class CostHeard(SchedulerObserver):
    def __init__(self) -> None:
        self.costs: list[int] = []

    def queued_cost(self, tokens: int) -> None:
        self.costs.append(tokens)


def test_the_queued_cost_counts_prompts_and_tokens_to_generate_and_falls_to_zero(engine):
    heard = CostHeard()
    scheduler = AsyncEngine(
        engine, queue_size=4, max_batch_size=8, batch_window_s=0.0, observer=heard
    )
    scheduler.start()

    async def scenario() -> None:
        stream = scheduler.generate(fake_prepared(tokens=10, rows=2, max_new_tokens=300), None)
        await anext(stream)
        async for _ in stream:
            pass

    try:
        asyncio.run(scenario())
    finally:
        scheduler.close()
    # after the step that prefilled it and made its first token (the fake makes one a step):
    # its 2 rows x 300 tokens less that one; then down to nothing
    assert heard.costs[0] == 2 * 300 - 1
    assert heard.costs == sorted(heard.costs, reverse=True) and heard.costs[-1] == 0
