"""A GenerateSteered caller that stops reading: the events waiting for it are bounded by
``batching.stream_buffer_events``; past that its rows stop and the call ends RESOURCE_EXHAUSTED,
instead of the engine generating on into an unbounded queue.

Driven at the scheduler, behind a fake engine: an event counts until the consumer asks for the
next one. Over a real connection (and the caller's HTTP/2 window): test_unread_stream.py."""

from __future__ import annotations

import asyncio

import pytest

from maira_sae.server.engine.async_engine import AsyncEngine
from maira_sae.server.engine.types import GeneratedToken
from maira_sae.server.errors import ResourceExhausted
from tests.support.fake_engine import FakeEngine, fake_prepared

BUFFER = 16
TOKENS = 10_000


def _scheduler(engine: FakeEngine) -> AsyncEngine:
    return AsyncEngine(
        engine, queue_size=4, max_batch_size=8, batch_window_s=0.0, stream_buffer_events=BUFFER
    )


def test_an_unread_stream_stops_its_rows_once_the_buffer_is_full():
    engine = FakeEngine(step_delay_s=0.0)
    scheduler = _scheduler(engine)
    scheduler.start()

    async def run() -> None:
        events = scheduler.generate(fake_prepared(max_new_tokens=TOKENS), deadline=None)  # type: ignore[arg-type]
        first = await events.__anext__()  # admitted and running; then nobody reads
        assert isinstance(first, GeneratedToken)
        await asyncio.sleep(1.0)
        # Reading now: the buffered events, then the refusal, and nothing more.
        received = 1
        with pytest.raises(ResourceExhausted, match="stream_buffer_events"):
            async for _ in events:
                received += 1
        assert received <= BUFFER + 1

    try:
        asyncio.run(run())
    finally:
        scheduler.close()
    assert engine.generated < TOKENS  # it stopped instead of generating them all
    assert engine.generated <= BUFFER + 2
