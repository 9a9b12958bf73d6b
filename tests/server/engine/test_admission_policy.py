"""The fair-share policy asserted on ``schedule`` plans: a short call is not starved by long
ones that came just before it, a long call that has waited its turn is not starved by short
ones, batch-marked work yields to interactive work (generations and the analysis batch), and
a call first in the fair order that does not fit still holds back the ones behind it."""

from __future__ import annotations

import pytest

from maira_sae.server.engine.admission_policy import FairShareByCost, Priority, WaitingCall
from maira_sae.server.engine.schedule import (
    BatchLimits,
    PrefillChunk,
    QueuedAnalysis,
    SchedulerState,
    StartedCall,
    StepPlan,
    Waiting,
    schedule,
)

FAIR = FairShareByCost(batch_weight=1 / 16)
LIMITS = BatchLimits(max_rows=8, prefill_token_budget=2000)
PROMPT = 100


def call(
    request_id: int,
    *,
    rows: int = 1,
    new: int = 8,
    served: int = 0,
    priority: Priority = Priority.INTERACTIVE,
) -> Waiting:
    """A generation that arrived ``request_id``-th, when the engine had done ``served`` tokens."""
    return Waiting(
        WaitingCall(
            request_id, request_id, 0.0, PROMPT, rows, new, priority, served_at_arrival=served
        )
    )


def plan(policy=FAIR, limits: BatchLimits = LIMITS, **state) -> StepPlan:
    return schedule(SchedulerState(now=0.0, **state), limits, max_analysis_batch=2, policy=policy)


def started(plan: StepPlan) -> list[int]:
    return [chunk.request_id for chunk in plan.prefill if chunk.starts]


def test_a_short_call_goes_before_long_ones_that_arrived_just_before_it():
    longs = tuple(call(i, rows=8, new=1024, served=i) for i in range(3))
    short = call(3, new=8, served=3)
    assert started(plan(None, waiting=(*longs, short))) == [0]  # arrival order: it waits
    assert started(plan(waiting=(*longs, short))) == [3]  # then 8 more rows do not fit


def test_a_long_call_that_waited_while_the_engine_did_its_cost_is_not_overtaken():
    long = call(0, rows=4, new=250, served=0)  # tag 0 + 100 + 4 x 250 = 1100
    assert started(plan(waiting=(long, call(1, served=991)))) == [1, 0]  # tag 991 + 108 = 1099
    assert started(plan(waiting=(long, call(1, served=993)))) == [0, 1]  # tag 1101


def test_the_first_call_in_the_fair_order_that_does_not_fit_holds_back_the_rest():
    running = (StartedCall(9, rows=6, prompt_tokens=PROMPT),)
    queue = (call(0, rows=4, new=8, served=0), call(1, rows=1, new=8, served=500))
    step = plan(running=running, waiting=queue, cached_positions=50)
    assert step == StepPlan(decode=True)  # 4 rows do not fit in 8 - 6; the 1-row call waits


def test_batch_calls_yield_to_interactive_ones_until_they_have_waited_their_turn():
    batch = call(0, served=0, priority=Priority.BATCH)  # cost 108, counted 16 x: 1728
    assert started(plan(waiting=(batch, call(1, served=1000)))) == [1, 0]
    assert started(plan(waiting=(batch, call(1, served=1700)))) == [0, 1]
    assert started(
        plan(waiting=(call(0, served=0), call(1, served=0, priority=Priority.BATCH)))
    ) == [0, 1]


def analysis(request_id: int, priority: Priority, served: int = 0) -> QueuedAnalysis:
    return QueuedAnalysis(
        request_id,
        cost_tokens=1400,
        arrival=request_id,
        priority=priority,
        served_at_arrival=served,
    )


def test_the_analysis_batch_takes_interactive_requests_before_queued_batch_ones():
    batch = [analysis(i, Priority.BATCH) for i in range(4)]  # tags 16 x 1400 = 22400
    queue = (*batch, analysis(4, Priority.INTERACTIVE, served=2800))  # tag 4200
    assert plan(None, analyses=queue).analyses == (0, 1)  # arrival order
    assert plan(analyses=queue).analyses == (4, 0)
    equal = tuple(analysis(i, Priority.INTERACTIVE) for i in range(3))
    assert plan(analyses=equal).analyses == (0, 1)  # equal tags: arrival order


def test_the_policy_refuses_a_weight_outside_0_to_1():
    with pytest.raises(ValueError, match="batch_weight must be in"):
        FairShareByCost(batch_weight=0)


def test_fair_order_keeps_chunked_prefill_of_the_call_being_prefilled_first():
    prefilling = StartedCall(7, rows=1, prompt_tokens=3000, prefill_remaining=1000)
    step = plan(prefilling=prefilling, waiting=(call(0), call(1, rows=8, new=1024)))
    assert step.prefill[0] == PrefillChunk(7, 1000, starts=False, completes=True)
    assert started(step) == [0]  # the long one's 8 rows do not fit beside the 2 running


KEPT = BatchLimits(max_rows=8, prefill_token_budget=2000, short_call_rows=2, long_call_tokens=64)


def test_long_calls_leave_the_kept_rows_to_short_calls():
    running = (StartedCall(9, rows=4, prompt_tokens=PROMPT),)
    long, short = call(0, rows=4, new=100), call(1, rows=2, new=8, served=10)
    assert started(plan(limits=KEPT, running=running, waiting=(long,))) == []  # 8 > 8 - 2
    assert started(plan(limits=KEPT, running=running, waiting=(long, short))) == [1]
    batch_short = call(1, rows=1, new=8, priority=Priority.BATCH)  # batch counts as long
    two_running = (StartedCall(9, rows=6, prompt_tokens=PROMPT),)
    assert started(plan(limits=KEPT, running=two_running, waiting=(batch_short,))) == []


def test_behind_a_call_that_does_not_fit_a_short_call_takes_only_the_kept_rows():
    long = call(0, rows=4, new=100)  # first in the fair order: it waited
    short = call(1, rows=1, new=8, served=10**6)
    # 3 rows running: the long call (7 > 6) waits; the short one may not take row 4, which
    # the long call waits for, only rows 7 and 8
    assert (
        started(plan(limits=KEPT, running=(StartedCall(9, 3, PROMPT),), waiting=(long, short)))
        == []
    )
    assert started(
        plan(limits=KEPT, running=(StartedCall(9, 6, PROMPT),), waiting=(long, short))
    ) == [1]
