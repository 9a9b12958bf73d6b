"""Refusal pacing on a fake clock: a connection is refused at once for a retry that waited its
delay, and up to one refusal per RetryInfo delay for each call it has open; a refusal past that
waits until the rate allows it, never past its deadline; other connections keep their own
pace."""

from __future__ import annotations

import asyncio

import pytest

from maira_sae.server.service.refusal_pacing import RefusalPacer

PEER = "ipv4:10.0.0.1:5000"


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Sleeps that overlap end each at its own time, as real ones do."""
        self.slept.append(seconds)
        wake_at = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, wake_at)


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def pacer_with_open_calls(fake: FakeTime, calls: dict[str, int], **kwargs) -> RefusalPacer:
    pacer = RefusalPacer(clock=fake.clock, sleep=fake.sleep, **kwargs)
    for peer, count in calls.items():
        for _ in range(count):
            pacer.call_opened(peer)
    return pacer


def pace(pacer: RefusalPacer, peer: str, delay_s: float, time_left_s: float | None = None):
    return asyncio.run(pacer.pace(peer, delay_s, time_left_s))


def test_a_caller_refused_again_too_soon_waits_out_its_delay(fake):
    pacer = pacer_with_open_calls(fake, {PEER: 1})
    assert pace(pacer, PEER, 0.5) == 0.0  # the first refusal is at once
    fake.now += 0.1
    assert pace(pacer, PEER, 0.5) == pytest.approx(0.4)  # 0.1 s after: held
    assert fake.slept == [pytest.approx(0.4)]
    # Answered at 100.5 and told 0.5 s: a call at 101.0 kept the pace.
    fake.now = 101.0
    assert pace(pacer, PEER, 2.0) == 0.0
    assert len(fake.slept) == 1


def test_callers_sharing_a_connection_that_keep_the_pace_are_never_held(fake):
    """32 callers on one connection (a process's channels, or a proxy's pool), each refused and
    coming back after its delay: 32 refusals a delay, none held."""
    pacer = pacer_with_open_calls(fake, {PEER: 32})
    for _ in range(5):
        assert [pace(pacer, PEER, 0.2) for _ in range(32)] == [0.0] * 32
        fake.now += 0.2
    assert fake.slept == []


def test_callers_sharing_a_connection_that_ignore_the_delay_are_held_to_its_rate(fake):
    """32 callers coming back at once: the connection is refused 32 times a delay, spread out."""
    pacer = pacer_with_open_calls(fake, {PEER: 32})
    assert [pace(pacer, PEER, 0.2) for _ in range(32)] == [0.0] * 32
    held = [pace(pacer, PEER, 0.2) for _ in range(16)]
    assert held == [pytest.approx(0.2 / 32)] * 16  # one each 6.25 ms
    assert fake.now == pytest.approx(100.1)


def test_a_retry_that_waited_is_answered_at_once_though_others_used_the_rate_up(fake):
    pacer = pacer_with_open_calls(fake, {PEER: 1})
    assert pace(pacer, PEER, 1.0) == 0.0  # caller A, told at 100.0 to come back at 101.0
    assert pace(pacer, PEER, 1.0) == pytest.approx(1.0)  # B, at once: held to 101.0
    assert pace(pacer, PEER, 1.0) == 0.0  # A's retry at 101.0: its delay has passed
    assert pace(pacer, PEER, 1.0) == pytest.approx(1.0)  # C, at once: the rate is used up
    fake.now = 102.9  # B's retry, told at 101.0, 0.9 s late: within its grace (to 103.0)
    assert pace(pacer, PEER, 1.0) == 0.0  # (the rate alone would hold it to 103.0)
    fake.now = 110.0
    assert pace(pacer, PEER, 1.0) == 0.0  # long after: the rate has room again


def test_other_connections_keep_their_own_pace(fake):
    pacer = pacer_with_open_calls(fake, {PEER: 1, "ipv4:10.0.0.1:5001": 1})
    pace(pacer, PEER, 1.0)
    assert pace(pacer, "ipv4:10.0.0.1:5001", 1.0) == 0.0
    assert pace(pacer, "ipv6:[::1]:5000", 1.0) == 0.0  # no call counted open: as one
    assert fake.slept == []


def test_a_hold_ends_before_the_calls_deadline(fake):
    pacer = pacer_with_open_calls(fake, {PEER: 1})
    pace(pacer, PEER, 5.0)
    assert pace(pacer, PEER, 5.0, time_left_s=0.3) == pytest.approx(0.3)
    assert pace(pacer, PEER, 5.0, time_left_s=-0.1) == 0.0  # no time left: at once
    assert fake.slept == [pytest.approx(0.3)]


def test_calls_held_together_wait_their_turns(fake):
    """Refusals that wait at once on one connection end one delay apart, not all together."""
    pacer = pacer_with_open_calls(fake, {PEER: 1})
    pace(pacer, PEER, 1.0)

    async def three_at_once() -> list[float]:
        return list(await asyncio.gather(*(pacer.pace(PEER, 1.0, None) for _ in range(3))))

    assert asyncio.run(three_at_once()) == [pytest.approx(s) for s in (1.0, 2.0, 3.0)]


def test_closed_calls_stop_counting(fake):
    pacer = pacer_with_open_calls(fake, {PEER: 2})
    pacer.call_closed(PEER)
    pace(pacer, PEER, 1.0)
    assert pace(pacer, PEER, 1.0) == pytest.approx(1.0)  # one open call: one a delay
    pacer.call_closed(PEER)
    pacer.call_closed(PEER)  # one close more than the opens: the count stops at none
    pacer.call_opened(PEER)
    pacer.call_opened(PEER)
    fake.now += 10
    assert [pace(pacer, PEER, 1.0) for _ in range(2)] == [0.0, 0.0]  # two open: two a delay


def test_only_the_most_recently_refused_connections_are_remembered(fake):
    pacer = pacer_with_open_calls(fake, {}, max_peers=3)
    for port in range(4):  # max_peers is 3: the first is forgotten
        pace(pacer, f"peer:{port}", 10.0)
    assert pace(pacer, "peer:0", 10.0) == 0.0
    assert pace(pacer, "peer:3", 10.0) == pytest.approx(10.0)
