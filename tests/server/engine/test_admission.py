"""Admission in two lanes: long and batch calls take at most their share of the places, short
interactive calls still get in while they hold it, refusals say which lane is full and carry
a retry delay, and places come back when calls end."""

from __future__ import annotations

import pytest

from maira_sae.server.engine.admission import AdmissionControl, AdmissionLimits, Lane
from maira_sae.server.engine.admission_policy import Priority
from maira_sae.server.engine.engine_core import SchedulerObserver
from maira_sae.server.errors import ResourceExhausted

LIMITS = AdmissionLimits(places=4, long_places=2, long_call_tokens=100)
BATCH, INTERACTIVE = Priority.BATCH, Priority.INTERACTIVE


class Heard(SchedulerObserver):
    def __init__(self) -> None:
        self.admitted: list[int] = []
        self.calls: list[tuple[str, str]] = []

    def admitted_requests(self, count: int) -> None:
        self.admitted.append(count)

    def call_admitted(self, priority: str, lane: str) -> None:
        self.calls.append((priority, lane))


@pytest.mark.parametrize(
    ("priority", "tokens", "lane"),
    [(INTERACTIVE, 0, Lane.SHORT), (INTERACTIVE, 100, Lane.SHORT), (INTERACTIVE, 101, Lane.LONG),
     (BATCH, 0, Lane.LONG)],
)  # fmt: skip
def test_a_call_is_long_when_it_asks_for_many_tokens_or_is_marked_batch(priority, tokens, lane):
    assert LIMITS.lane(priority, tokens) is lane


def test_long_calls_hold_at_most_their_places_and_short_calls_still_get_in():
    heard = Heard()
    control = AdmissionControl(LIMITS, heard)
    long_calls = [control.admit(INTERACTIVE, 8192), control.admit(BATCH)]
    with pytest.raises(ResourceExhausted, match=r"long and batch calls are taken \(2 of 4") as no:
        control.admit(INTERACTIVE, 8192)
    assert no.value.retry_after_s > 0
    short = [control.admit(INTERACTIVE), control.admit(INTERACTIVE, 16)]
    with pytest.raises(ResourceExhausted, match=r"queue is full \(4 requests\)"):
        control.admit(INTERACTIVE)
    long_calls[0].release()
    control.admit(BATCH)  # the place freed is taken again
    assert heard.admitted == [1, 2, 3, 4, 3, 4]
    assert heard.calls == [("interactive", "long"), ("batch", "long"), ("interactive", "short"),
                           ("interactive", "short"), ("batch", "long")]  # fmt: skip
    for admission in short:
        admission.release()
        admission.release()  # a second release gives nothing back
    assert control.admitted == 2


def test_every_place_may_be_long_when_the_share_is_all():
    control = AdmissionControl(AdmissionLimits(2, 2, long_call_tokens=0), SchedulerObserver())
    control.admit(BATCH), control.admit(INTERACTIVE, 5)
    assert control.admitted == 2


def test_the_long_places_must_be_within_the_places():
    with pytest.raises(ValueError, match=r"long_places must be in 1\.\.4"):
        AdmissionLimits(places=4, long_places=5, long_call_tokens=1)
