"""Refusal pacing on a fake clock: a connection refused again before its RetryInfo delay has
passed waits out the rest of it, never past its deadline; one that kept the pace, or another
connection, is answered at once."""

from __future__ import annotations

import asyncio

import pytest

from maira_sae.server.service.refusal_pacing import RefusalPacer


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Sleeps that overlap end together, as real ones do."""
        self.slept.append(seconds)
        wake_at = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, wake_at)


@pytest.fixture
def time_and_pacer() -> tuple[FakeTime, RefusalPacer]:
    fake = FakeTime()
    return fake, RefusalPacer(max_peers=3, clock=fake.clock, sleep=fake.sleep)


def pace(pacer: RefusalPacer, peer: str, delay_s: float, time_left_s: float | None = None):
    return asyncio.run(pacer.pace(peer, delay_s, time_left_s))


def test_a_connection_refused_again_too_soon_waits_out_its_delay(time_and_pacer):
    fake, pacer = time_and_pacer
    assert pace(pacer, "ipv4:10.0.0.1:5000", 0.5) == 0.0  # the first refusal is at once
    fake.now += 0.1
    assert pace(pacer, "ipv4:10.0.0.1:5000", 0.5) == pytest.approx(0.4)  # 0.1 s after: held
    assert fake.slept == [pytest.approx(0.4)]
    # Answered at 100.5 and told 0.5 s: a call at 101.0 kept the pace.
    fake.now = 101.0
    assert pace(pacer, "ipv4:10.0.0.1:5000", 2.0) == 0.0
    assert len(fake.slept) == 1


def test_other_connections_keep_their_own_pace(time_and_pacer):
    fake, pacer = time_and_pacer
    pace(pacer, "ipv4:10.0.0.1:5000", 1.0)
    assert pace(pacer, "ipv4:10.0.0.1:5001", 1.0) == 0.0
    assert pace(pacer, "ipv6:[::1]:5000", 1.0) == 0.0
    assert fake.slept == []


def test_a_hold_ends_before_the_calls_deadline(time_and_pacer):
    fake, pacer = time_and_pacer
    pace(pacer, "peer", 5.0)
    assert pace(pacer, "peer", 5.0, time_left_s=0.3) == pytest.approx(0.3)
    assert pace(pacer, "peer", 5.0, time_left_s=-0.1) == 0.0  # no time left: at once
    assert fake.slept == [pytest.approx(0.3)]


def test_calls_held_together_are_answered_together_and_set_the_next_pace(time_and_pacer):
    """Calls that wait on one connection at once all end when its delay ends; the next delay
    counts from then, so a connection gets its refusals at most once per delay."""
    fake, pacer = time_and_pacer
    pace(pacer, "peer", 1.0)

    async def three_at_once() -> list[float]:
        return list(await asyncio.gather(*(pacer.pace("peer", 1.0, None) for _ in range(3))))

    assert asyncio.run(three_at_once()) == [pytest.approx(1.0)] * 3
    assert fake.now == pytest.approx(101.0)
    fake.now = 101.5
    assert pace(pacer, "peer", 1.0) == pytest.approx(0.5)  # told at 101.0 to wait 1.0


def test_only_the_most_recently_refused_connections_are_remembered(time_and_pacer):
    _, pacer = time_and_pacer
    for port in range(4):  # max_peers is 3: the first is forgotten
        pace(pacer, f"peer:{port}", 10.0)
    assert pace(pacer, "peer:0", 10.0) == 0.0
    assert pace(pacer, "peer:3", 10.0) == pytest.approx(10.0)
